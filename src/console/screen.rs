//! Where the console's text goes: a view redrawn in place on a terminal, or plain lines.
//!
//! On a terminal the view takes the alternate screen (as `top` does), so the shell's scrollback
//! is left as it was, and each frame overwrites the previous one line by line inside a
//! synchronized update (no flicker). The terminal is not put in raw mode: Ctrl+C stays the
//! terminal's interrupt, the signal the console waits for, as the original monitor did.
//! Everything is undone on drop, also when unwinding from a panic.

use std::io::{self, IsTerminal, Write};

use crossterm::{cursor, queue, style, terminal};

/// How the console writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A view redrawn in place (stdout is a terminal).
    Interactive,
    /// A line per event and a summary every interval, no escape codes (a pipe or a file).
    Lines,
}

impl Mode {
    /// Interactive when stdout is a terminal that understands escape codes.
    pub fn detect() -> Mode {
        let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
        if io::stdout().is_terminal() && !dumb {
            Mode::Interactive
        } else {
            Mode::Lines
        }
    }
}

/// The terminal, taken over for the live view until dropped.
pub struct Screen {
    out: io::BufWriter<io::Stdout>,
}

impl Screen {
    pub fn enter() -> io::Result<Screen> {
        let mut out = io::BufWriter::with_capacity(64 * 1024, io::stdout());
        queue!(
            out,
            terminal::EnterAlternateScreen,
            terminal::DisableLineWrap,
            cursor::Hide,
            terminal::Clear(terminal::ClearType::All)
        )?;
        out.flush()?;
        Ok(Screen { out })
    }

    /// The terminal's size in characters (80x24 if it cannot be told).
    pub fn size(&self) -> (usize, usize) {
        terminal::size()
            .map(|(w, h)| (usize::from(w), usize::from(h)))
            .unwrap_or((80, 24))
    }

    /// Replaces what is on screen with `lines`, one per row from the top; rows below them
    /// are cleared.
    pub fn draw(&mut self, lines: &[String]) -> io::Result<()> {
        let (_, height) = self.size();
        let out = &mut self.out;
        queue!(out, terminal::BeginSynchronizedUpdate)?;
        for (row, line) in lines.iter().take(height).enumerate() {
            queue!(
                out,
                cursor::MoveTo(0, row as u16),
                style::Print(line),
                terminal::Clear(terminal::ClearType::UntilNewLine)
            )?;
        }
        if lines.len() < height {
            // (Moving below the last row would land on it, and clear it.)
            queue!(
                out,
                cursor::MoveTo(0, lines.len() as u16),
                terminal::Clear(terminal::ClearType::FromCursorDown)
            )?;
        }
        queue!(out, terminal::EndSynchronizedUpdate)?;
        out.flush()
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = queue!(
            self.out,
            terminal::EnableLineWrap,
            cursor::Show,
            terminal::LeaveAlternateScreen
        );
        let _ = self.out.flush();
    }
}

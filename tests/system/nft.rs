//! nftables tables the tests make (the input hook: a drop there makes the sender retransmit),
//! each named after the test process and deleted when dropped.

use std::io::Write;
use std::process::{Command, Stdio};

/// An nftables table of this process's own, deleted when dropped.
pub struct NftTable {
    name: String,
}

impl NftTable {
    /// Drops one packet in ten arriving for TCP port `port` (the input hook: a drop on output is
    /// a failed local send, which TCP sends again as new data, not as a retransmission), and
    /// counts what it dropped.
    pub fn drop_one_in_ten(port: u16) -> NftTable {
        NftTable::with_rule(
            "tcpinfo",
            &format!("tcp dport {port} numgen random mod 10 == 0"),
        )
    }

    /// Drops every packet arriving for TCP port `port`.
    pub fn drop_all(port: u16) -> NftTable {
        NftTable::with_rule("all", &format!("tcp dport {port}"))
    }

    /// A table `fixmon_{what}_{pid}` whose input chain counts and drops what `rule` matches.
    fn with_rule(what: &str, rule: &str) -> NftTable {
        let name = format!("fixmon_{what}_{}", std::process::id());
        let script = format!(
            "table inet {name} {{\n\
               chain input {{\n\
                 type filter hook input priority -10; policy accept;\n\
                 {rule} counter drop\n\
               }}\n\
             }}\n"
        );
        nft(&["-f", "-"], Some(&script));
        NftTable { name }
    }

    /// Packets and bytes (headers included) the rule dropped.
    pub fn dropped(&self) -> (u64, u64) {
        let listing = nft(&["list", "table", "inet", &self.name], None);
        let at = listing.find("counter packets ").expect(&listing);
        // "counter packets 9 bytes 491122 drop"
        let w: Vec<&str> = listing[at..].split_whitespace().collect();
        assert_eq!((w[1], w[3]), ("packets", "bytes"), "{listing}");
        (w[2].parse().unwrap(), w[4].parse().unwrap())
    }
}

impl Drop for NftTable {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.name])
            .status();
    }
}

fn nft(args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nft (nftables) is required: scripts/fetch-tools.sh installs it");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.unwrap_or("").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "nft {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

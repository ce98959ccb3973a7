//! Real-kernel tests (root): the programs loaded, loopback sessions opened by the test itself
//! as ground truth, and `ss -tin` as the second opinion on health. One binary built from
//! modules; every test binds port 0 and waits on conditions, not on fixed sleeps.

mod kernel {
    pub mod support;

    mod errors;
    mod health;
    mod lifecycle;
    mod scale;
}

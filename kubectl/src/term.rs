//! The local terminal for `exec -t`: raw mode while the remote command runs, and its size.

use std::io::IsTerminal;

use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios};

/// Puts stdin's terminal in raw mode (keys go to the remote terminal unprocessed, Ctrl-C
/// included) and restores the saved settings when dropped.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Enables raw mode when stdin is a terminal; `Ok(None)` when it is not (a pipe, a file).
    pub fn enable() -> Result<Option<RawMode>, nix::Error> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Ok(None);
        }
        let saved = tcgetattr(&stdin)?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw)?;
        Ok(Some(RawMode { saved }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // Nothing useful can be done if restoring fails (the terminal is gone).
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}

/// The size (columns, rows) of the terminal on stdout, or stdin when stdout is redirected.
pub fn size() -> Option<(u16, u16)> {
    terminal_size::terminal_size_of(std::io::stdout())
        .or_else(|| terminal_size::terminal_size_of(std::io::stdin()))
        .map(|(w, h)| (w.0, h.0))
}

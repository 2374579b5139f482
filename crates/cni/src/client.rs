//! The plugin's side of the agent socket: one request, one response (see [`crate::protocol`]).

use std::io::ErrorKind;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::protocol::{Request, Response, WireError, read_message, write_message};

/// Why a call to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nothing listens on the socket: the agent is not running (yet), or restarting.
    #[error("the ests node agent is not running: nothing listens on {socket}: {source}")]
    Absent {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The agent took longer than the config's timeout.
    #[error("the ests node agent at {socket} did not answer within {timeout:?}")]
    TimedOut { socket: PathBuf, timeout: Duration },
    #[error("talking to the ests node agent at {socket}: {source}")]
    Io {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the ests node agent at {socket}: {source}")]
    Wire {
        socket: PathBuf,
        #[source]
        source: WireError,
    },
}

/// How long the plugin waits for an absent agent to come back (a restarted agent listens
/// again within a second or two): a restart then costs the pods being created nothing, where
/// a failed ADD costs each of them the kubelet's back-off.
const AGENT_RESTART_WAIT: Duration = Duration::from_secs(3);
/// How often an absent agent's socket is tried again.
const RECONNECT_EVERY: Duration = Duration::from_millis(50);

/// Connects to the agent, trying again while nothing listens, for up to `wait`.
fn connect(socket: &Path, wait: Duration) -> Result<UnixStream, CallError> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        match UnixStream::connect(socket) {
            Ok(stream) => return Ok(stream),
            // No socket file, or a file nobody listens on (an agent that died).
            Err(source)
                if matches!(
                    source.kind(),
                    ErrorKind::NotFound | ErrorKind::ConnectionRefused
                ) =>
            {
                if std::time::Instant::now() >= deadline {
                    return Err(CallError::Absent {
                        socket: socket.to_path_buf(),
                        source,
                    });
                }
                std::thread::sleep(RECONNECT_EVERY);
            }
            Err(source) => {
                return Err(CallError::Io {
                    socket: socket.to_path_buf(),
                    source,
                });
            }
        }
    }
}

/// Sends `request` to the agent at `socket` and reads its answer, all within `timeout`
/// per read and write.
pub fn call(socket: &Path, timeout: Duration, request: &Request) -> Result<Response, CallError> {
    let stream = connect(socket, timeout.min(AGENT_RESTART_WAIT))?;
    let io = |source: std::io::Error| CallError::Io {
        socket: socket.to_path_buf(),
        source,
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let wire = |source: WireError| match &source {
        WireError::Read(e) | WireError::Write(e)
            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
        {
            CallError::TimedOut {
                socket: socket.to_path_buf(),
                timeout,
            }
        }
        _ => CallError::Wire {
            socket: socket.to_path_buf(),
            source,
        },
    };
    write_message(&stream, request).map_err(wire)?;
    // The end of the request: the agent reads to here.
    stream.shutdown(Shutdown::Write).map_err(io)?;
    read_message(&stream).map_err(wire)
}

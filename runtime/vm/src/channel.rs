//! The host–guest channel: framed messages over one virtio-serial port
//! (the guest's /dev/vportNpM named `rt.agent`, a UNIX socket on the host),
//! and the same frames between rt's host processes and the VM's supervisor.
//!
//! A frame is a 9-byte header — payload length (u32, big-endian), stream
//! (u32), kind (u8) — and the payload. Stream 0 carries JSON messages
//! ([`ToGuest`], [`ToHost`]); a process's stdio is multiplexed on streams
//! `proc << 2 | fd` (fd 0, 1 or 2), as [`Kind::Data`] and, once closed,
//! [`Kind::Eof`]. Process 1 is the container's init; exec'd processes get
//! the numbers their requester picks. Streams keep their order; nothing is
//! acknowledged below the request/reply level.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

/// The largest payload a frame may carry: a hostile or confused peer cannot
/// make the reader allocate more.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// What a frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A JSON message (stream 0).
    Message = 0,
    /// Bytes of a process's stdio stream.
    Data = 1,
    /// The stream is closed.
    Eof = 2,
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub stream: u32,
    pub kind: Kind,
    pub payload: Vec<u8>,
}

/// Errors of the channel.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("channel closed")]
    Closed,
    #[error("reading or writing the channel")]
    Io(#[source] std::io::Error),
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("unknown frame kind {0}")]
    BadKind(u8),
    #[error("malformed message")]
    Json(#[source] serde_json::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// The stream of `proc`'s descriptor `fd` (0, 1, 2).
pub fn stream(proc: u32, fd: u32) -> u32 {
    proc << 2 | (fd & 3)
}

/// The process and descriptor of a stream.
pub fn split(stream: u32) -> (u32, u32) {
    (stream >> 2, stream & 3)
}

impl Frame {
    pub fn message<T: Serialize>(msg: &T) -> Frame {
        Frame {
            stream: 0,
            kind: Kind::Message,
            payload: serde_json::to_vec(msg).expect("messages serialise"),
        }
    }

    pub fn data(stream: u32, bytes: &[u8]) -> Frame {
        Frame {
            stream,
            kind: Kind::Data,
            payload: bytes.to_vec(),
        }
    }

    pub fn eof(stream: u32) -> Frame {
        Frame {
            stream,
            kind: Kind::Eof,
            payload: Vec::new(),
        }
    }

    /// The JSON message of a [`Kind::Message`] frame.
    pub fn parse<'a, T: Deserialize<'a>>(&'a self) -> Result<T> {
        serde_json::from_slice(&self.payload).map_err(Error::Json)
    }

    /// Writes the frame in one `write_all` (header and payload together),
    /// so frames from several threads sharing a locked writer never mix.
    pub fn write_to(&self, w: &mut impl Write) -> Result<()> {
        if self.payload.len() > MAX_PAYLOAD {
            return Err(Error::TooLarge(self.payload.len()));
        }
        let mut buf = Vec::with_capacity(9 + self.payload.len());
        buf.extend_from_slice(&(self.payload.len() as u32).to_be_bytes());
        buf.extend_from_slice(&self.stream.to_be_bytes());
        buf.push(self.kind as u8);
        buf.extend_from_slice(&self.payload);
        w.write_all(&buf).map_err(Error::Io)?;
        w.flush().map_err(Error::Io)
    }

    /// Reads one frame; [`Error::Closed`] at a clean end of the stream.
    pub fn read_from(r: &mut impl Read) -> Result<Frame> {
        let mut head = [0u8; 9];
        match r.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(Error::Closed),
            Err(e) => return Err(Error::Io(e)),
        }
        let len = u32::from_be_bytes(head[0..4].try_into().expect("4 bytes")) as usize;
        let stream = u32::from_be_bytes(head[4..8].try_into().expect("4 bytes"));
        let kind = match head[8] {
            0 => Kind::Message,
            1 => Kind::Data,
            2 => Kind::Eof,
            k => return Err(Error::BadKind(k)),
        };
        if len > MAX_PAYLOAD {
            return Err(Error::TooLarge(len));
        }
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Error::Closed,
            _ => Error::Io(e),
        })?;
        Ok(Frame {
            stream,
            kind,
            payload,
        })
    }
}

/// Messages to the guest's agent (and to the supervisor, from rt's other
/// host processes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToGuest {
    /// A request, answered by a [`ToHost::Reply`] with the same `req`.
    Request { req: u64, op: Op },
    /// A terminal's new window size.
    Resize { proc: u32, rows: u16, cols: u16 },
    /// Sync the guest's filesystems and power off.
    Shutdown,
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Creates the container (process 1) from `config` (a config.json whose
    /// paths are the guest's); its stdio is streams 4–6, or a terminal.
    Create {
        id: String,
        config: serde_json::Value,
        terminal: bool,
        /// The interface the guest takes over from the caller's network
        /// namespace (None: the guest has only `lo`).
        #[serde(default)]
        network: Option<GuestNet>,
    },
    /// Starts the created container.
    Start,
    /// Signals the init, or with `all` every process of the container.
    Kill { signal: i32, all: bool },
    /// Runs `process` (a config.json `process`) in the container as
    /// process number `proc`.
    Exec {
        proc: u32,
        process: serde_json::Value,
        terminal: bool,
    },
    /// Runs the guest's rt on the container with `args` as process number
    /// `proc`, its output streamed (the host's `rt events`).
    Stream { proc: u32, args: Vec<String> },
    /// Sends `signal` to process `proc` (an exec'd one; the init is
    /// [`Op::Kill`]'s).
    Signal { proc: u32, signal: i32 },
    /// Runs the guest's rt on the container with `args` (ps, pause, resume,
    /// update, events --stats), `input` on its stdin.
    Rt {
        args: Vec<String>,
        input: Option<String>,
    },
    /// The agent replies, then sends nothing more until [`Op::Thaw`]: the
    /// channel is quiet at frame boundaries when the VM is saved or
    /// migrated, so no frame is cut between two supervisors. The
    /// container's processes keep running; their output waits.
    Quiesce,
    /// Resumes the agent's output after [`Op::Quiesce`] (in the same VM, or
    /// in its restored or migrated copy): the guest's clock is set to
    /// `unix_ns` (it stood still while the VM was stopped), and with
    /// `network` eth0 takes that interface's MAC, addresses and routes
    /// (the restored VM's new namespace).
    Thaw {
        unix_ns: u64,
        #[serde(default)]
        network: Option<GuestNet>,
    },
    /// To the supervisor itself (never the guest): save the whole VM into
    /// `dir` (QEMU's migration stream and the disk image); with
    /// `leave_running` the VM continues, else it is stopped and the
    /// supervisor dies of SIGKILL, as a CRIU-dumped init does.
    Save {
        dir: std::path::PathBuf,
        leave_running: bool,
    },
    /// To the supervisor itself: live-migrate the VM to `uri` (a QEMU
    /// migration URI: `unix:PATH`, `tcp:HOST:PORT`), the disk with it; the
    /// VM runs during the copy and is left stopped at its end. The reply's
    /// output is the migration's figures (JSON).
    Migrate { uri: String },
    /// To the supervisor itself, after [`Op::Migrate`]: `resume` the VM
    /// (the destination failed) or end it (the destination runs).
    Finish { resume: bool },
}

impl Op {
    /// The request's name on the wire (its `op` tag).
    pub fn name(&self) -> &'static str {
        match self {
            Op::Create { .. } => "create",
            Op::Start => "start",
            Op::Kill { .. } => "kill",
            Op::Exec { .. } => "exec",
            Op::Stream { .. } => "stream",
            Op::Signal { .. } => "signal",
            Op::Rt { .. } => "rt",
            Op::Quiesce => "quiesce",
            Op::Thaw { .. } => "thaw",
            Op::Save { .. } => "save",
            Op::Migrate { .. } => "migrate",
            Op::Finish { .. } => "finish",
        }
    }
}

/// The guest's eth0: the MAC, MTU, addresses and routes of the interface
/// in the caller's network namespace that the VM's tap is joined to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GuestNet {
    pub mac: String,
    pub mtu: u32,
    /// `10.88.0.5/16`.
    pub addrs: Vec<String>,
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// `default` or a prefix.
    pub dst: String,
    pub gateway: Option<String>,
}

/// Messages from the guest's agent (and from the supervisor).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToHost {
    /// The agent is up; `kernel` is the guest's `uname -r`.
    Ready {
        kernel: String,
    },
    Reply {
        req: u64,
        reply: Reply,
    },
    /// A process ended; `status` is its raw wait status.
    Exited {
        proc: u32,
        status: i32,
    },
}

/// The answer to a request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// Why the request failed (rt's own message, as runc words it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The guest pid of a created or exec'd process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// An `rt` run's exit code and stdout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

impl Reply {
    pub fn failed(error: impl Into<String>) -> Reply {
        Reply {
            error: Some(error.into()),
            ..Reply::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_ones_are_refused() {
        let mut buf = Vec::new();
        let req = ToGuest::Request {
            req: 7,
            op: Op::Kill {
                signal: 15,
                all: false,
            },
        };
        Frame::message(&req).write_to(&mut buf).unwrap();
        Frame::data(stream(2, 1), b"out")
            .write_to(&mut buf)
            .unwrap();
        Frame::eof(stream(2, 0)).write_to(&mut buf).unwrap();
        let mut r = &buf[..];
        let f = Frame::read_from(&mut r).unwrap();
        assert_eq!(f.parse::<ToGuest>().unwrap(), req);
        let d = Frame::read_from(&mut r).unwrap();
        assert_eq!(
            (d.kind, split(d.stream), &d.payload[..]),
            (Kind::Data, (2, 1), &b"out"[..])
        );
        assert_eq!(Frame::read_from(&mut r).unwrap().kind, Kind::Eof);
        assert!(matches!(Frame::read_from(&mut r), Err(Error::Closed)));

        let mut huge = (MAX_PAYLOAD as u32 + 1).to_be_bytes().to_vec();
        huge.extend_from_slice(&[0, 0, 0, 0, 1]);
        assert!(matches!(
            Frame::read_from(&mut &huge[..]),
            Err(Error::TooLarge(_))
        ));
        let bad = [0, 0, 0, 0, 0, 0, 0, 0, 9];
        assert!(matches!(
            Frame::read_from(&mut &bad[..]),
            Err(Error::BadKind(9))
        ));
        let cut = [0, 0, 0, 5, 0, 0, 0, 0, 1, b'a'];
        assert!(matches!(
            Frame::read_from(&mut &cut[..]),
            Err(Error::Closed)
        ));
    }

    #[test]
    fn replies_omit_what_is_unset() {
        let r = serde_json::to_string(&ToHost::Reply {
            req: 1,
            reply: Reply::failed("no"),
        })
        .unwrap();
        assert_eq!(r, r#"{"type":"reply","req":1,"reply":{"error":"no"}}"#);
    }
}

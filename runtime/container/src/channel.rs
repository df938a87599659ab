//! Typed messages between rt's processes over a SOCK_SEQPACKET socketpair.
//!
//! Each datagram is one JSON-encoded message, optionally carrying one file
//! descriptor (SCM_RIGHTS). End of file means the peer died.

use std::io::{IoSlice, IoSliceMut};
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::cmsg_space;
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Errors of the channel.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("creating socketpair")]
    Socketpair(#[source] nix::errno::Errno),
    #[error("sending message")]
    Send(#[source] nix::errno::Errno),
    #[error("receiving message")]
    Recv(#[source] nix::errno::Errno),
    #[error("peer closed the channel")]
    Closed,
    #[error("malformed message")]
    Decode(#[source] serde_json::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Why [`send_over_unix_socket`] failed.
#[derive(Debug)]
pub enum SocketSend {
    Connect(std::io::Error),
    Send(nix::errno::Errno),
}

/// Connects to the unix stream socket at `path` and sends `payload` in one
/// message with `fd` riding along (SCM_RIGHTS): the console socket's and the
/// seccomp listener's protocol.
pub fn send_over_unix_socket(
    path: &std::path::Path,
    payload: &[u8],
    fd: BorrowedFd<'_>,
) -> std::result::Result<(), SocketSend> {
    let stream = std::os::unix::net::UnixStream::connect(path).map_err(SocketSend::Connect)?;
    let fds = [fd.as_raw_fd()];
    sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(payload)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map(drop)
    .map_err(SocketSend::Send)
}

/// The most descriptors one message carries (the receiver's control
/// buffer holds this many).
pub const MAX_FDS: usize = 32;

/// Messages from the stage and init processes to the parent.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum ToParent {
    /// The stage has unshared its user namespace: write its uid/gid maps.
    UserNamespaceReady,
    /// The stage forked the init: its host pid.
    InitPid(i32),
    /// The init has mounted the rootfs: run the prestart and createRuntime hooks.
    RuntimeHooks,
    /// The pty master rides along with this message.
    Terminal,
    /// The seccomp user-notification descriptor rides along with this
    /// message, for the parent to hand to the listener.
    SeccompListener,
    /// The init waits for `start`.
    Ready,
    /// A step failed; the text is the whole error chain.
    Failed(String),
}

/// Messages from the parent to the stage and init processes.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum ToChild {
    /// The user namespace maps are written.
    MapsWritten,
    /// The container's cgroup is made and limited: the init, cloned before
    /// (see `Launch::cgroups_pending`), may enter it. The v1 hierarchies'
    /// `tasks` files, opened by the parent, ride along (none on a v2 host,
    /// or when there are more than [`MAX_FDS`]: the init opens them).
    CgroupsReady,
    /// The prestart and createRuntime hooks succeeded.
    HooksDone,
    /// The process's seccomp profile, compiled by the parent after
    /// `CgroupsReady` (see `Launch::profile_from_parent`); None: it did not
    /// compile, and the init compiles it to report why.
    Profile(Option<crate::seccomp::Wire>),
}

/// One end of a typed channel: sends `S`, receives `R`.
#[derive(Debug)]
pub struct Channel<S, R> {
    fd: OwnedFd,
    _types: PhantomData<fn(S) -> R>,
}

/// The parent's end and the children's end.
pub type ParentEnd = Channel<ToChild, ToParent>;
pub type ChildEnd = Channel<ToParent, ToChild>;

/// A connected pair: (parent's end, children's end), both close-on-exec.
pub fn pair() -> Result<(ParentEnd, ChildEnd)> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(Error::Socketpair)?;
    Ok((Channel::new(a), Channel::new(b)))
}

impl<S: Serialize, R: DeserializeOwned> Channel<S, R> {
    fn new(fd: OwnedFd) -> Self {
        Channel {
            fd,
            _types: PhantomData,
        }
    }

    pub fn send(&self, msg: &S) -> Result<()> {
        self.send_with_fd(msg, None)
    }

    pub fn send_with_fd(&self, msg: &S, fd: Option<BorrowedFd<'_>>) -> Result<()> {
        self.send_with_fds(msg, fd.as_slice())
    }

    /// Sends `msg` with `fds` riding along; at most [`MAX_FDS`] of them.
    pub fn send_with_fds(&self, msg: &S, fds: &[BorrowedFd<'_>]) -> Result<()> {
        if fds.len() > MAX_FDS {
            return Err(Error::Send(nix::errno::Errno::E2BIG));
        }
        let buf = serde_json::to_vec(msg).map_err(Error::Decode)?;
        let iov = [IoSlice::new(&buf)];
        let fds: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let cmsgs: Vec<ControlMessage<'_>> = if fds.is_empty() {
            Vec::new()
        } else {
            vec![ControlMessage::ScmRights(&fds)]
        };
        sendmsg::<()>(self.fd.as_raw_fd(), &iov, &cmsgs, MsgFlags::empty(), None)
            .map_err(Error::Send)?;
        Ok(())
    }

    pub fn recv(&self) -> Result<R> {
        self.recv_with_fd().map(|(m, _)| m)
    }

    pub fn recv_with_fd(&self) -> Result<(R, Option<OwnedFd>)> {
        self.recv_with_fds()
            .map(|(msg, fds)| (msg, fds.into_iter().next()))
    }

    /// Receives a message and the descriptors riding along with it, in the
    /// order sent (close-on-exec).
    pub fn recv_with_fds(&self) -> Result<(R, Vec<OwnedFd>)> {
        // The message's length first (MSG_PEEK | MSG_TRUNC gives a
        // datagram's whole length), so that the buffer is the message's
        // size: a fixed 64 KiB one, zeroed on every receive, was some
        // fifteen page faults a message.
        let mut probe = [0u8; 1];
        // A peer that closed its end with a message of ours unread leaves
        // ECONNRESET pending here, and the kernel reports a pending error
        // before the messages queued ahead of it (an init that failed,
        // reported why and exited before reading `CgroupsReady`). Reading
        // the error clears it: the next receive gets the queue, then end
        // of file. Once per receive, since a peer closes once.
        let mut reset_seen = false;
        let mut retry = |e: nix::errno::Errno| match e {
            nix::errno::Errno::EINTR => true,
            nix::errno::Errno::ECONNRESET if !reset_seen => {
                reset_seen = true;
                true
            }
            _ => false,
        };
        let peeked = loop {
            let mut iov = [IoSliceMut::new(&mut probe)];
            match recvmsg::<()>(
                self.fd.as_raw_fd(),
                &mut iov,
                None,
                MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC,
            ) {
                Err(e) if retry(e) => continue,
                other => break other.map_err(Error::Recv)?.bytes,
            }
        };
        if peeked == 0 {
            return Err(Error::Closed);
        }
        let mut buf = vec![0u8; peeked];
        let mut cmsg = cmsg_space!([RawFd; MAX_FDS]);
        let (len, fds) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = loop {
                match recvmsg::<()>(
                    self.fd.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                ) {
                    Err(e) if retry(e) => continue,
                    other => break other.map_err(Error::Recv)?,
                }
            };
            let mut fds = Vec::new();
            for c in msg.cmsgs().map_err(Error::Recv)? {
                if let ControlMessageOwned::ScmRights(raws) = c {
                    for raw in raws {
                        // SAFETY: the kernel installed this descriptor in our table
                        // for this message; nothing else owns it.
                        fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
                    }
                }
            }
            (msg.bytes, fds)
        };
        if len == 0 {
            return Err(Error::Closed);
        }
        let msg = serde_json::from_slice(&buf[..len]).map_err(Error::Decode)?;
        Ok((msg, fds))
    }
}

impl<S, R> AsFd for Channel<S, R> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that reports and closes with a message of ours unread: the
    /// report still arrives (the kernel's pending ECONNRESET came first,
    /// and a failed init's error was lost), then end of file.
    #[test]
    fn a_report_before_a_reset_is_received() {
        let (parent, child) = pair().unwrap();
        parent.send(&ToChild::CgroupsReady).unwrap();
        child
            .send(&ToParent::Failed("mount failed".into()))
            .unwrap();
        drop(child);
        assert_eq!(
            parent.recv().unwrap(),
            ToParent::Failed("mount failed".into())
        );
        assert!(matches!(parent.recv(), Err(Error::Closed)));
    }

    #[test]
    fn roundtrip_with_fd() {
        let (parent, child) = pair().unwrap();
        child.send(&ToParent::InitPid(42)).unwrap();
        assert_eq!(parent.recv().unwrap(), ToParent::InitPid(42));
        let f = std::fs::File::open("/dev/null").unwrap();
        child
            .send_with_fd(&ToParent::Terminal, Some(f.as_fd()))
            .unwrap();
        let (m, fd) = parent.recv_with_fd().unwrap();
        assert_eq!(m, ToParent::Terminal);
        assert!(fd.is_some());
        parent.send(&ToChild::HooksDone).unwrap();
        assert_eq!(child.recv().unwrap(), ToChild::HooksDone);
        drop(parent);
        assert!(matches!(child.recv(), Err(Error::Closed)));
    }

    /// Descriptors arrive in the order sent, each naming what was sent;
    /// more than the receiver could hold is refused at the sender.
    #[test]
    fn several_descriptors_arrive_in_order() {
        use std::io::{Read, Seek, Write};
        let (parent, child) = pair().unwrap();
        let files: Vec<std::fs::File> = (0..MAX_FDS)
            .map(|i| {
                let mut f = tempfile_in_tmp();
                write!(f, "{i}").unwrap();
                f
            })
            .collect();
        let fds: Vec<BorrowedFd<'_>> = files.iter().map(|f| f.as_fd()).collect();
        parent.send_with_fds(&ToChild::CgroupsReady, &fds).unwrap();
        let (m, got) = child.recv_with_fds().unwrap();
        assert_eq!(m, ToChild::CgroupsReady);
        assert_eq!(got.len(), MAX_FDS);
        for (i, fd) in got.into_iter().enumerate() {
            let mut f = std::fs::File::from(fd);
            f.rewind().unwrap();
            let mut s = String::new();
            f.read_to_string(&mut s).unwrap();
            assert_eq!(s, i.to_string());
        }
        let one_more: Vec<BorrowedFd<'_>> = fds.iter().chain(&fds[..1]).copied().collect();
        assert!(matches!(
            parent.send_with_fds(&ToChild::CgroupsReady, &one_more),
            Err(Error::Send(nix::errno::Errno::E2BIG))
        ));
        // A message without descriptors: none.
        parent.send(&ToChild::HooksDone).unwrap();
        assert!(child.recv_with_fds().unwrap().1.is_empty());
    }

    /// An unnamed file of its own (O_TMPFILE in /tmp).
    fn tempfile_in_tmp() -> std::fs::File {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .open("/tmp")
            .unwrap()
    }

    #[test]
    fn messages_of_any_size_arrive_whole() {
        let (parent, child) = pair().unwrap();
        for len in [0, 1, 4096, 100_000] {
            let msg = ToParent::Failed("x".repeat(len));
            child.send(&msg).unwrap();
            assert_eq!(parent.recv().unwrap(), msg, "{len} bytes");
        }
        // One queued before the peer went is still read, then the end.
        child.send(&ToParent::Ready).unwrap();
        drop(child);
        assert_eq!(parent.recv().unwrap(), ToParent::Ready);
        assert!(matches!(parent.recv(), Err(Error::Closed)));
    }
}

//! The remote log host of the isolated network: a TCP listener on an
//! address of the second host, bound inside the "outside" namespace (its
//! thread joins that namespace with setns; no process is spawned), keeping
//! every byte the machines send. It can be stopped and started again, to
//! show that what a machine logs while its log host is down still arrives.

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

pub struct Collector {
    netns: String,
    address: SocketAddr,
    received: Arc<Mutex<Vec<u8>>>,
    running: Mutex<Option<(Arc<AtomicBool>, JoinHandle<()>)>>,
}

/// Moves the calling thread (only it) into the named network namespace.
pub(crate) fn enter_network_namespace(netns: &str) -> std::io::Result<()> {
    let file = std::fs::File::open(format!("/run/netns/{netns}"))?;
    // SAFETY: a valid namespace file descriptor; setns changes only this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Collector {
    pub fn new(netns: &str, address: SocketAddr) -> Collector {
        Collector { netns: netns.to_string(), address, received: Arc::default(), running: Mutex::new(None) }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Starts listening; returns once the port is bound.
    pub fn start(&self) -> Result<()> {
        let mut running = self.running.lock().map_err(|_| anyhow!("collector state poisoned"))?;
        if running.is_some() {
            return Ok(());
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (bound_tx, bound_rx) = mpsc::channel();
        let (netns, address, received, stop_flag) = (self.netns.clone(), self.address, self.received.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let listener = enter_network_namespace(&netns).and_then(|_| TcpListener::bind(address)).and_then(|l| {
                l.set_nonblocking(true)?;
                Ok(l)
            });
            let listener = match listener {
                Ok(listener) => {
                    let _ = bound_tx.send(Ok(()));
                    listener
                }
                Err(error) => {
                    let _ = bound_tx.send(Err(error));
                    return;
                }
            };
            serve(&listener, &received, &stop_flag);
        });
        bound_rx
            .recv()
            .map_err(|_| anyhow!("the collector thread ended early"))?
            .with_context(|| format!("while starting the log collector on {} in namespace {}", self.address, self.netns))?;
        *running = Some((stop, thread));
        Ok(())
    }

    /// Stops listening and closes every connection, as a host going down would.
    pub fn stop(&self) {
        let taken = self.running.lock().ok().and_then(|mut r| r.take());
        if let Some((stop, thread)) = taken {
            stop.store(true, Ordering::SeqCst);
            let _ = thread.join();
        }
    }

    /// Everything received so far, as text.
    pub fn received(&self) -> String {
        self.received.lock().map(|r| String::from_utf8_lossy(&r).into_owned()).unwrap_or_default()
    }
}

fn serve(listener: &TcpListener, received: &Mutex<Vec<u8>>, stop: &AtomicBool) {
    let mut connections: Vec<TcpStream> = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    while !stop.load(Ordering::SeqCst) {
        while let Ok((stream, _)) = listener.accept() {
            if stream.set_nonblocking(true).is_ok() {
                connections.push(stream);
            }
        }
        connections.retain_mut(|stream| loop {
            match stream.read(&mut buffer) {
                Ok(0) => return false,
                Ok(n) => {
                    if let Ok(mut r) = received.lock() {
                        r.extend_from_slice(&buffer[..n]);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        });
        std::thread::sleep(Duration::from_millis(50));
    }
    for stream in connections {
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_namespace_is_an_error_not_a_hang() {
        let collector = Collector::new("rampart-no-such-namespace", "127.0.0.1:0".parse().unwrap());
        let error = format!("{:#}", collector.start().unwrap_err());
        assert!(error.contains("while starting the log collector"), "{error}");
    }
}

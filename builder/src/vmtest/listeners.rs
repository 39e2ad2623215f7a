//! Small listeners on a lab host: each TCP port answers a connection with
//! one line, "rampart-lab NETWORK PORT from PEER", and closes it; each UDP
//! port answers a datagram the same way. The peer address is the one the
//! host saw, so a check reads from it whether a gateway masqueraded the
//! connection (it shows the gateway's address) or forwarded it as it was.
//! The thread joins the host's namespace with setns; no process is spawned.

use std::io::{ErrorKind, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use crate::vmtest::collector::enter_network_namespace;

pub struct Listeners {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What a listener answers to a connection or a datagram from `peer`.
pub fn answer(network: &str, port: u16, peer: SocketAddr) -> String {
    format!("rampart-lab {network} {port} from {}\n", peer.ip())
}

fn bind(address: Ipv4Addr, tcp: &[u16], udp: &[u16]) -> std::io::Result<(Vec<(u16, TcpListener)>, Vec<(u16, UdpSocket)>)> {
    let mut listeners = Vec::new();
    for &port in tcp {
        let listener = TcpListener::bind((address, port))?;
        listener.set_nonblocking(true)?;
        listeners.push((port, listener));
    }
    let mut sockets = Vec::new();
    for &port in udp {
        let socket = UdpSocket::bind((address, port))?;
        socket.set_nonblocking(true)?;
        sockets.push((port, socket));
    }
    Ok((listeners, sockets))
}

impl Listeners {
    /// Binds every port on `address` in namespace `netns`; returns once bound.
    pub fn start(netns: &str, network: &str, address: Ipv4Addr, tcp: &[u16], udp: &[u16]) -> Result<Listeners> {
        let stop = Arc::new(AtomicBool::new(false));
        let (bound_tx, bound_rx) = mpsc::channel();
        let (netns_owned, network, tcp, udp, stop_flag) = (netns.to_string(), network.to_string(), tcp.to_vec(), udp.to_vec(), stop.clone());
        let thread = std::thread::spawn(move || {
            let (listeners, sockets) = match enter_network_namespace(&netns_owned).and_then(|_| bind(address, &tcp, &udp)) {
                Ok(bound) => {
                    let _ = bound_tx.send(Ok(()));
                    bound
                }
                Err(error) => {
                    let _ = bound_tx.send(Err(error));
                    return;
                }
            };
            serve(&network, &listeners, &sockets, &stop_flag);
        });
        bound_rx
            .recv()
            .map_err(|_| anyhow!("the listener thread ended early"))?
            .with_context(|| format!("while starting the listeners of {address} in namespace {netns}"))?;
        Ok(Listeners { stop, thread: Some(thread) })
    }
}

fn serve(network: &str, listeners: &[(u16, TcpListener)], sockets: &[(u16, UdpSocket)], stop: &AtomicBool) {
    let mut buffer = [0u8; 2048];
    while !stop.load(Ordering::SeqCst) {
        for (port, listener) in listeners {
            while let Ok((mut stream, peer)) = listener.accept() {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
                let _ = stream.write_all(answer(network, *port, peer).as_bytes());
            }
        }
        for (port, socket) in sockets {
            loop {
                match socket.recv_from(&mut buffer) {
                    Ok((_, peer)) => {
                        let _ = socket.send_to(answer(network, *port, peer).as_bytes(), peer);
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_names_the_network_the_port_and_the_peer() {
        assert_eq!(answer("dmz", 80, "10.77.0.2:40000".parse().unwrap()), "rampart-lab dmz 80 from 10.77.0.2\n");
    }
}

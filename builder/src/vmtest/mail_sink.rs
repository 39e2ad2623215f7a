//! The lab's smarthost: an SMTP server on an address of the outside host,
//! bound inside that namespace (its threads join it with setns; no process
//! runs), that offers STARTTLS with a throwaway certificate and takes mail
//! only after it: the profile's `mail.smarthost` when it points there. It
//! keeps every message with its envelope and whether it came encrypted.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use crate::vmtest::collector::enter_network_namespace;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    /// It came after STARTTLS.
    pub encrypted: bool,
    pub data: String,
}

pub struct MailSink {
    address: SocketAddr,
    received: Arc<Mutex<Vec<Mail>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The most one message may hold.
const MAX_MESSAGE: usize = 16 << 20;

/// A self-signed ECDSA certificate for the lab's smarthost, made in `work`.
fn tls_config(work: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let (key, cert) = (work.join("mail-sink.key.der"), work.join("mail-sink.cert.der"));
    crate::process::Cmd::new("openssl")
        .args(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-outform", "DER", "-out"])
        .arg(&key)
        .run()?;
    crate::process::Cmd::new("openssl")
        .args(["req", "-x509", "-new", "-keyform", "DER", "-key"])
        .arg(&key)
        .args(["-subj", "/CN=rampart-lab-smarthost", "-days", "2", "-outform", "DER", "-out"])
        .arg(&cert)
        .run()?;
    let cert = rustls::pki_types::CertificateDer::from(std::fs::read(&cert)?);
    let key = rustls::pki_types::PrivateKeyDer::try_from(std::fs::read(&key)?).map_err(|e| anyhow!("the sink's key: {e}"))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    Ok(Arc::new(config))
}

impl MailSink {
    /// Listens on `address` inside `netns`; returns once the port is bound.
    pub fn start(netns: &str, address: SocketAddr, work: &Path) -> Result<MailSink> {
        let tls = tls_config(work).context("while making the lab smarthost's certificate")?;
        let (received, stop) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let (bound_tx, bound_rx) = mpsc::channel();
        let (netns_owned, kept, stopping) = (netns.to_string(), received.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let listener = enter_network_namespace(&netns_owned).and_then(|_| TcpListener::bind(address)).and_then(|l| {
                l.set_nonblocking(true)?;
                Ok(l)
            });
            match listener {
                Ok(listener) => {
                    let _ = bound_tx.send(Ok(()));
                    accept(&listener, &tls, &kept, &stopping);
                }
                Err(error) => {
                    let _ = bound_tx.send(Err(error));
                }
            }
        });
        bound_rx
            .recv()
            .map_err(|_| anyhow!("the mail sink's thread ended early"))?
            .with_context(|| format!("while starting the lab smarthost on {address} in namespace {netns}"))?;
        Ok(MailSink { address, received, stop, thread: Some(thread) })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Every message so far, oldest first.
    pub fn received(&self) -> Vec<Mail> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for MailSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn accept(listener: &TcpListener, tls: &Arc<rustls::ServerConfig>, received: &Arc<Mutex<Vec<Mail>>>, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let (tls, received) = (tls.clone(), received.clone());
                // each connection on its own thread, which inherits nothing it
                // needs from the namespace: the socket is already made
                std::thread::spawn(move || {
                    let _ = serve(stream, tls, &received);
                });
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn serve(stream: TcpStream, tls: Arc<rustls::ServerConfig>, received: &Mutex<Vec<Mail>>) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut plain = stream;
    plain.write_all(b"220 rampart-lab-smarthost ESMTP\r\n")?;
    if dialogue(&mut plain, false, received)? == Ending::StartTls {
        let connection = rustls::ServerConnection::new(tls).map_err(std::io::Error::other)?;
        let mut encrypted = rustls::StreamOwned::new(connection, plain);
        dialogue(&mut encrypted, true, received)?;
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
enum Ending {
    Quit,
    StartTls,
}

/// One SMTP session (RFC 5321's commands a relay client sends) over
/// `stream`. Mail is taken only once `encrypted`; before that MAIL is
/// refused and STARTTLS ends this part of the session.
fn dialogue<S: Read + Write>(stream: &mut S, encrypted: bool, received: &Mutex<Vec<Mail>>) -> std::io::Result<Ending> {
    let mut reader = BufReader::new(stream);
    let mut envelope: Option<(String, Vec<String>)> = None;
    loop {
        let mut line = String::new();
        if reader.by_ref().take(4096).read_line(&mut line)? == 0 {
            return Ok(Ending::Quit);
        }
        let command = line.trim_end();
        let verb = command.split_whitespace().next().unwrap_or_default().to_ascii_uppercase();
        let argument = |prefix: &str| command.get(prefix.len()..).filter(|_| command.to_ascii_uppercase().starts_with(prefix)).map(|a| a.trim().to_string());
        let reply: &str = match verb.as_str() {
            "EHLO" if encrypted => "250-rampart-lab-smarthost\r\n250-8BITMIME\r\n250 SIZE 16777216\r\n",
            "EHLO" => "250-rampart-lab-smarthost\r\n250-8BITMIME\r\n250 STARTTLS\r\n",
            "HELO" => "250 rampart-lab-smarthost\r\n",
            "STARTTLS" if !encrypted => {
                reader.get_mut().write_all(b"220 2.0.0 ready to start TLS\r\n")?;
                reader.get_mut().flush()?;
                return Ok(Ending::StartTls);
            }
            "MAIL" if !encrypted => "530 5.7.0 must issue a STARTTLS command first\r\n",
            "MAIL" => match argument("MAIL FROM:") {
                Some(from) => {
                    envelope = Some((from, Vec::new()));
                    "250 2.1.0 ok\r\n"
                }
                None => "501 5.5.4 syntax: MAIL FROM:<address>\r\n",
            },
            "RCPT" => match (envelope.as_mut(), argument("RCPT TO:")) {
                (Some((_, to)), Some(address)) => {
                    to.push(address);
                    "250 2.1.5 ok\r\n"
                }
                (None, _) => "503 5.5.1 MAIL first\r\n",
                (_, None) => "501 5.5.4 syntax: RCPT TO:<address>\r\n",
            },
            "DATA" => match envelope.take() {
                Some((from, to)) if !to.is_empty() => {
                    reader.get_mut().write_all(b"354 end data with <CR><LF>.<CR><LF>\r\n")?;
                    reader.get_mut().flush()?;
                    let data = read_data(&mut reader)?;
                    if let Ok(mut all) = received.lock() {
                        all.push(Mail { from, to, encrypted, data });
                    }
                    "250 2.0.0 queued\r\n"
                }
                _ => "503 5.5.1 RCPT first\r\n",
            },
            "RSET" => {
                envelope = None;
                "250 2.0.0 ok\r\n"
            }
            "NOOP" => "250 2.0.0 ok\r\n",
            "QUIT" => {
                reader.get_mut().write_all(b"221 2.0.0 bye\r\n")?;
                return Ok(Ending::Quit);
            }
            _ => "502 5.5.2 not implemented\r\n",
        };
        reader.get_mut().write_all(reply.as_bytes())?;
        reader.get_mut().flush()?;
    }
}

/// The message up to the line holding a single dot, dots unstuffed.
fn read_data<R: BufRead>(reader: &mut R) -> std::io::Result<String> {
    let mut data = String::new();
    loop {
        let mut line = String::new();
        if reader.by_ref().take(64 * 1024).read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "the client left in the middle of DATA"));
        }
        if line.trim_end_matches(['\r', '\n']) == "." {
            return Ok(data);
        }
        let line = line.strip_prefix('.').unwrap_or(&line);
        if data.len() + line.len() > MAX_MESSAGE {
            return Err(std::io::Error::new(ErrorKind::InvalidData, "message too large"));
        }
        data.push_str(&line.replace("\r\n", "\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's lines against one dialogue; the server's replies.
    fn session(client: &str, encrypted: bool) -> (String, Ending, Vec<Mail>) {
        struct Duplex<'a> {
            input: &'a [u8],
            output: Vec<u8>,
        }
        impl Read for Duplex<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.input.read(buf)
            }
        }
        impl Write for Duplex<'_> {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.output.write(buf)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let received = Mutex::new(Vec::new());
        let mut duplex = Duplex { input: client.as_bytes(), output: Vec::new() };
        let ending = dialogue(&mut duplex, encrypted, &received).unwrap();
        (String::from_utf8(duplex.output).unwrap(), ending, received.into_inner().unwrap())
    }

    #[test]
    fn mail_is_refused_until_starttls() {
        let (replies, ending, mails) = session("EHLO guest\r\nMAIL FROM:<root@m>\r\nSTARTTLS\r\nNOOP\r\n", false);
        assert!(replies.contains("250 STARTTLS\r\n"), "{replies}");
        assert!(replies.contains("530 5.7.0"), "{replies}");
        assert!(replies.ends_with("220 2.0.0 ready to start TLS\r\n"), "{replies}");
        assert_eq!(ending, Ending::StartTls);
        assert!(mails.is_empty());
    }

    #[test]
    fn an_encrypted_session_delivers_with_its_envelope_and_dots_unstuffed() {
        let client = "EHLO guest\r\nMAIL FROM:<root@m> SIZE=10\r\nRCPT TO:<a@lab.example>\r\nRCPT TO:<b@lab.example>\r\nDATA\r\nSubject: x\r\n\r\n..leading dot\r\nbody\r\n.\r\nQUIT\r\n";
        let (replies, ending, mails) = session(client, true);
        assert!(!replies.contains("STARTTLS"), "{replies}");
        assert!(replies.contains("354 ") && replies.contains("250 2.0.0 queued") && replies.ends_with("221 2.0.0 bye\r\n"), "{replies}");
        assert_eq!(ending, Ending::Quit);
        assert_eq!(
            mails,
            vec![Mail { from: "<root@m> SIZE=10".into(), to: vec!["<a@lab.example>".into(), "<b@lab.example>".into()], encrypted: true, data: "Subject: x\n\n.leading dot\nbody\n".into() }]
        );
    }

    #[test]
    fn data_without_recipients_and_unknown_commands_are_refused() {
        let (replies, _, mails) = session("DATA\r\nMAIL FROM:<x@y>\r\nDATA\r\nVRFY root\r\n", true);
        assert_eq!(replies.matches("503 ").count(), 2, "{replies}");
        assert!(replies.contains("502 5.5.2"), "{replies}");
        assert!(mails.is_empty());
    }
}

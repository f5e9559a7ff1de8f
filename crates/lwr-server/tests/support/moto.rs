//! A real S3-compatible server for the S3 store tests: moto (`python3 -m moto.server`) on a
//! free loopback port, killed on drop. Without moto a test fails, unless
//! `LWR_TEST_SKIP_S3=1` says to skip it: a machine without moto cannot pass the S3 tests
//! unnoticed. `.ci/run` installs moto.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longest moto may take to listen.
const START: Duration = Duration::from_secs(30);

pub struct Moto {
    child: Child,
    pub port: u16,
    pub url: String,
}

impl Moto {
    /// Starts moto; `None` (the test says "skipped") only when moto is missing and
    /// `LWR_TEST_SKIP_S3=1`.
    pub fn start() -> Option<Moto> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let child = match Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(child) => child,
            Err(e) => return missing(&format!("cannot run python3: {e}")),
        };
        let mut moto = Moto {
            child,
            port,
            url: format!("http://127.0.0.1:{port}"),
        };
        let start = Instant::now();
        while start.elapsed() < START {
            if let Ok(Some(_)) = moto.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = moto.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return missing(err.trim());
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(moto);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("moto did not listen on port {port} within {START:?}");
    }

    pub fn create_bucket(&self, bucket: &str) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connecting to moto");
        write!(
            s,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .expect("asking moto for a bucket");
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "creating bucket: {answer}"
        );
    }

    /// The environment an lwr server needs to use this moto.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.url.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ]
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn missing(why: &str) -> Option<Moto> {
    if std::env::var_os("LWR_TEST_SKIP_S3").is_some_and(|v| v == "1") {
        eprintln!("skipped (LWR_TEST_SKIP_S3=1): moto did not start: {why}");
        return None;
    }
    panic!(
        "moto did not start: {why}. Install it (pip install 'moto[server]', as .ci/run does) \
         or set LWR_TEST_SKIP_S3=1 to skip the S3 tests"
    );
}

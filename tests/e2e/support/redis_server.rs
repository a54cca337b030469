//! A `redis-server` of the test's own on a free loopback port (no persistence), killed on drop;
//! it can be killed, restarted on the same port, frozen (SIGSTOP) and thawed mid-test.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running (or killed, or frozen) `redis-server`.
pub struct RedisServer {
    child: Option<Child>,
    /// Extra `redis-server` arguments (`--requirepass ...`), kept for a restart.
    args: Vec<String>,
    /// Its loopback port (kept across a restart).
    pub port: u16,
}

impl RedisServer {
    /// Starts one on a free port and waits until it accepts connections.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts one with extra `redis-server` arguments. A port found free can be taken again
    /// before redis-server binds it: a few tries, each on a new port.
    pub fn start_with(args: &[&str]) -> RedisServer {
        let mut why = String::new();
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let mut r = RedisServer { child: None, args: args.iter().map(|a| a.to_string()).collect(), port };
            match r.try_start() {
                Ok(()) => return r,
                Err(e) => why = e,
            }
        }
        panic!("redis-server did not start: {why}");
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it again on the same port (after [`RedisServer::kill`]), empty.
    pub fn restart(&mut self) {
        if let Err(why) = self.try_start() {
            panic!("redis-server did not start again on {}: {why}", self.port);
        }
    }

    /// Starts it on its port and waits (up to 10 s, as a loaded machine may need) until it
    /// accepts connections; if it exits first, its log says why.
    fn try_start(&mut self) -> Result<(), String> {
        let log = std::env::temp_dir().join(format!("pgw-redis-e2e-{}.log", self.port));
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--logfile", &log.display().to_string()])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)");
        self.child = Some(child);
        for _ in 0..1000 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        Err(std::fs::read_to_string(&log).unwrap_or_else(|_| "no log".into()))
    }

    /// Kills it (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes it (SIGSTOP): connections stay open, nothing answers.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Thaws it (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").args([sig, &c.id().to_string()]).status();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.thaw();
        self.kill();
    }
}

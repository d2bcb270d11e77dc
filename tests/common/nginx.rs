//! nginx on 127.0.0.1 serving a directory, for the tests of published
//! repositories: started with its own configuration and stopped with
//! SIGTERM, so that no worker outlives a test.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

/// nginx serving `root` on 127.0.0.1, logging each request's path and body
/// bytes to `access.log`; stopped on drop.
pub struct Nginx {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Nginx {
    pub fn serve(root: &Path) -> Nginx {
        Nginx::serve_with(root, "")
    }

    /// With `directives` added to the server block (`limit_rate 64k;`).
    pub fn serve_with(root: &Path, directives: &str) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let d = dir.path().display();
        let conf = format!(
            r#"user root;
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{}}
http {{
  log_format bytes '$uri $status $body_bytes_sent';
  access_log {d}/access.log bytes;
  default_type application/octet-stream;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
    listen 127.0.0.1:{port};
    root {root};
    {directives}
    location ~ /(summary|summary\.sig|config)$ {{ add_header Cache-Control "no-cache"; }}
    location ~ /refs/ {{ add_header Cache-Control "no-cache"; }}
    location ~ /(objects|deltas)/ {{ add_header Cache-Control "public, max-age=31536000, immutable"; }}
  }}
}}
"#,
            root = root.display()
        );
        let conf_path = dir.path().join("nginx.conf");
        fs::write(&conf_path, conf).unwrap();
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir.path())
            // A worker that outlived the test must not hold the test
            // runner's output open (test.sh waits for it through tee).
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting nginx");
        let server = Nginx { child, port, dir };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("nginx did not start");
    }

    /// The URL of `repo` (a directory under the served root).
    pub fn url(&self, repo: &str) -> String {
        format!("http://127.0.0.1:{}/{repo}", self.port)
    }

    /// Pids of the master's workers.
    pub fn workers(&self) -> Vec<String> {
        let out = Command::new("pgrep")
            .arg("-P")
            .arg(self.child.id().to_string())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    /// (path, bytes) of every request since the log was last cleared.
    pub fn requests(&self) -> Vec<(String, u64)> {
        fs::read_to_string(self.log())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                Some((f.first()?.to_string(), f.get(2)?.parse().ok()?))
            })
            .collect()
    }

    pub fn clear_log(&self) {
        fs::write(self.log(), "").unwrap();
    }
}

impl Drop for Nginx {
    /// SIGTERM, not SIGKILL: the master then stops its workers; a killed
    /// master leaves them running, serving the port and holding files.
    fn drop(&mut self) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

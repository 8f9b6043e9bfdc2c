//! Garage, a real distributed S3-compatible object store, run on loopback
//! for the registry's tests: one node, or a cluster with replication.
//!
//! The test command installs the binary (`scripts/install-garage.sh`);
//! `THAW_GARAGE` may point at another one.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::repo_root;

/// The bucket every cluster is created with.
pub const BUCKET: &str = "thaw-artifacts";

fn garage_binary() -> PathBuf {
    let path = std::env::var_os("THAW_GARAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".toolchain/garage/bin/garage"));
    assert!(
        path.exists(),
        "garage is not installed at {}: run scripts/install-garage.sh (the test command does)",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One Garage node.
pub struct Node {
    config: PathBuf,
    /// `127.0.0.1:<port>` of its S3 API.
    pub s3_address: String,
    rpc_address: String,
    child: Option<Child>,
}

impl Node {
    fn start(dir: &Path, index: usize, secret: &str, replication: usize) -> Node {
        let root = dir.join(format!("node{index}"));
        std::fs::create_dir_all(&root).unwrap();
        let (rpc, s3, admin) = (free_port(), free_port(), free_port());
        let config = root.join("garage.toml");
        std::fs::write(
            &config,
            format!(
                r#"metadata_dir = "{root}/meta"
data_dir = "{root}/data"
db_engine = "sqlite"
replication_factor = {replication}
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
admin_token = "{secret}"
"#,
                root = root.display()
            ),
        )
        .unwrap();
        let mut node = Node {
            config,
            s3_address: format!("127.0.0.1:{s3}"),
            rpc_address: format!("127.0.0.1:{rpc}"),
            child: None,
        };
        node.resume();
        node
    }

    /// Starts (or restarts) the server process on the same data.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "the node is running");
        let log = std::fs::File::create(self.config.with_file_name("garage.log")).unwrap();
        let child = Command::new(garage_binary())
            .arg("-c")
            .arg(&self.config)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting garage");
        self.child = Some(child);
        wait_for_port(&self.s3_address);
    }

    /// Kills the server process (its data stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn cli(&self, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let output = Command::new(garage_binary())
                .arg("-c")
                .arg(&self.config)
                .args(args)
                .stdin(Stdio::null())
                .output()
                .unwrap();
            if output.status.success() {
                return String::from_utf8_lossy(&output.stdout).into_owned();
            }
            assert!(
                Instant::now() < deadline,
                "garage {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn id(&self) -> String {
        let full = self.cli(&["node", "id", "-q"]);
        full.trim().split('@').next().unwrap().to_string()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wait_for_port(address: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(address).is_err() {
        assert!(
            Instant::now() < deadline,
            "garage did not listen on {address}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A Garage cluster on loopback with one bucket and one access key.
pub struct Garage {
    /// Its nodes; the first serves the S3 endpoint the tests use.
    pub nodes: Vec<Node>,
    /// Access key id.
    pub key_id: String,
    /// Secret access key.
    pub secret: String,
    _dir: tempfile::TempDir,
}

impl Garage {
    /// A single node, replication 1.
    pub fn single() -> Garage {
        Self::cluster(1)
    }

    /// `size` nodes with replication `size`, fully connected, with a fresh
    /// layout, bucket [`BUCKET`] and a read-write key.
    pub fn cluster(size: usize) -> Garage {
        let dir = tempfile::tempdir().unwrap();
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).unwrap();
        let secret: String = seed.iter().map(|b| format!("{b:02x}")).collect();
        let nodes: Vec<Node> = (0..size)
            .map(|i| Node::start(dir.path(), i, &secret, size))
            .collect();
        let first = &nodes[0];
        for other in &nodes[1..] {
            let peer = format!("{}@{}", other.id(), other.rpc_address);
            first.cli(&["node", "connect", &peer]);
        }
        for node in &nodes {
            first.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node.id()]);
        }
        first.cli(&["layout", "apply", "--version", "1"]);
        let key = first.cli(&["key", "create", "thaw-test"]);
        let field = |name: &str| {
            key.lines()
                .find_map(|line| line.trim().strip_prefix(name))
                .map(|v| v.trim().trim_start_matches(':').trim().to_string())
                .unwrap_or_else(|| panic!("no {name} in garage's answer: {key}"))
        };
        let (key_id, secret_key) = (field("Key ID"), field("Secret key"));
        first.cli(&["bucket", "create", BUCKET]);
        first.cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            BUCKET,
            "--key",
            "thaw-test",
        ]);
        Garage {
            nodes,
            key_id,
            secret: secret_key,
            _dir: dir,
        }
    }

    /// The S3 endpoint URL of the first node.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.nodes[0].s3_address)
    }

    /// The AWS environment variables that point `s3://` stores here.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_REGION", "garage".into()),
            ("AWS_ACCESS_KEY_ID", self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            // Fail fast in tests when a node is down on purpose.
            ("THAW_S3_RETRY_TIMEOUT_SECS", "3".into()),
        ]
    }

    /// An `object_store` client of the bucket, for tests that reach past
    /// thaw (to tamper with an object, say).
    pub fn bucket(&self) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_region("garage")
            .with_access_key_id(&self.key_id)
            .with_secret_access_key(&self.secret)
            .with_allow_http(true)
            .with_bucket_name(BUCKET)
            .build()
            .unwrap()
    }
}

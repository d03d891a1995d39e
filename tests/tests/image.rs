//! The container image from `Containerfile`, built and run with podman: the cache server and the
//! operator both start in it, answer `/healthz` as the unprivileged user, and exit 0 on SIGTERM.
//! No registry is reachable here, so the image is built on a local Debian base
//! (`scripts/build-base-image.sh`, which the test runs; it returns at once once the base exists).

mod common;

use common::image::{ok, podman, Image};

use std::time::{Duration, Instant};

use nixcache_tests::kube::KubeApiServer;

/// A running container; removed when dropped.
struct Container {
    name: String,
}

impl Container {
    fn run(image: &Image, name: &str, extra: &[&str], args: &[&str]) -> Container {
        let _ = podman(&["rm", "-f", name]);
        let mut all = vec!["run", "-d", "--name", name, "--network", "host"];
        all.extend(extra);
        all.push(&image.tag);
        all.extend(args);
        ok(&all);
        Container { name: name.into() }
    }

    fn logs(&self) -> String {
        let out = podman(&["logs", &self.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn wait_healthy(&self, port: u16) {
        let start = Instant::now();
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = write!(s, "GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n");
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                if out.split(' ').nth(1) == Some("200") {
                    return;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{} did not answer /healthz:\n{}",
                self.name,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `podman stop` sends SIGTERM and, after the timeout, SIGKILL: exit code 0 means the
    /// process stopped by itself on SIGTERM.
    fn stop_cleanly(&self) {
        ok(&["stop", "-t", "30", &self.name]);
        let code = ok(&["inspect", "--format", "{{.State.ExitCode}}", &self.name]);
        assert_eq!(code, "0", "exit code after SIGTERM:\n{}", self.logs());
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", &self.name]);
    }
}

fn install_crd(api: &KubeApiServer) {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    use kube::CustomResourceExt;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let kubeconfig = Kubeconfig::read_from(&api.kubeconfig).expect("kubeconfig");
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .expect("config");
        let client = kube::Client::try_from(config).expect("client");
        let crds: kube::Api<
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
        > = kube::Api::all(client);
        crds.create(
            &kube::api::PostParams::default(),
            &nixcache_operator::crd::NixCache::crd(),
        )
        .await
        .expect("create the CRD");
    });
}

#[test]
fn the_image_runs_the_server_and_the_operator_and_both_stop_on_sigterm() {
    let image = Image::build();
    let tag = format!("{}", std::process::id());

    // The server, with the image's defaults (data in /var/lib/nixcache, JSON logs).
    let port = nixcache_tests::free_port();
    let listen = format!("127.0.0.1:{port}");
    let server = Container::run(
        &image,
        &format!("nixcache-server-{tag}"),
        &[],
        &[
            "serve",
            "--listen",
            &listen,
            "--upstream",
            "http://127.0.0.1:1",
        ],
    );
    server.wait_healthy(port);
    assert_eq!(
        ok(&["exec", &server.name, "id", "-u"]),
        "65532",
        "runs unprivileged"
    );
    // It generated its signing key into its data directory and serves its public half.
    let key = ok(&[
        "exec",
        &server.name,
        "cat",
        "/var/lib/nixcache/signing-key.sec",
    ]);
    assert!(nixcache::nix::SecretKey::parse(&key).is_ok());
    assert!(
        server.logs().contains("\"level\":\"INFO\""),
        "JSON logs:\n{}",
        server.logs()
    );
    server.stop_cleanly();

    // The operator, from the same image, against a real API server.
    let api = KubeApiServer::start();
    install_crd(&api);
    let port = nixcache_tests::free_port();
    let mount = format!("{}:/kubeconfig:ro,Z", api.kubeconfig.display());
    let operator = Container::run(
        &image,
        &format!("nixcache-operator-{tag}"),
        &[
            "--entrypoint",
            "/usr/local/bin/nixcache-operator",
            "-v",
            &mount,
        ],
        &[
            "run",
            "--kubeconfig",
            "/kubeconfig",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--lease-namespace",
            "default",
        ],
    );
    operator.wait_healthy(port);
    let start = Instant::now();
    while !operator.logs().contains("leading: reconciling NixCaches") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the operator did not take the Lease:\n{}",
            operator.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    operator.stop_cleanly();
    assert!(
        operator.logs().contains("operator stopped"),
        "{}",
        operator.logs()
    );
}

//! A Go client of the BackupService, as monoctl or another Monoskope service would write one:
//! stubs generated from `api/` by protoc-gen-go and protoc-gen-go-grpc (from the Go module proxy)
//! with the protoc the build vendors, compiled under the `go_package` the protos declare, and the
//! program in `tests/go/monoctl-client` connecting as monoctl connects to Monoskope's services
//! (TLS with the service's CA, the bearer token as per-RPC credentials) and calling every RPC
//! against the running service through Monoskope's gateway rules. Nothing generated is committed.

use std::path::Path;
use std::process::Command;

use monoskope_backup_tests::fixture::{sample, store, Fixture};
use monoskope_backup_tests::{service_env, Devstore, Server};

const MODULE: &str = "github.com/finleap-connect/monoskope";

fn sh(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Generates the stubs and builds the client in `dir`; returns the binary.
fn build_client(dir: &Path, plugins: &str) -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let src = root.join("tests/go/monoctl-client");
    let client = dir.join("client");
    let gen = client.join("gen");
    std::fs::create_dir_all(&gen).expect("dirs");
    for f in ["go.mod", "main.go"] {
        std::fs::copy(src.join(f), client.join(f)).expect("copy");
    }
    std::fs::write(
        gen.join("go.mod"),
        format!("module {MODULE}\n\ngo 1.26\n\nrequire (\n\tgoogle.golang.org/grpc v1.85.0\n\tgoogle.golang.org/protobuf v1.36.12\n)\n"),
    )
    .expect("gen go.mod");
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc");
    let include = protoc_bin_vendored::include_path().expect("vendored includes");
    sh(
        Command::new(protoc)
            .arg("-I")
            .arg(root.join("api"))
            .arg("-I")
            .arg(include)
            .arg(format!("--plugin=protoc-gen-go={plugins}/protoc-gen-go"))
            .arg(format!(
                "--plugin=protoc-gen-go-grpc={plugins}/protoc-gen-go-grpc"
            ))
            .arg(format!("--go_out={}", gen.display()))
            .arg(format!("--go_opt=module={MODULE}"))
            .arg(format!("--go-grpc_out={}", gen.display()))
            .arg(format!("--go-grpc_opt=module={MODULE}"))
            .arg("monoskope/backup/v1/backup_service.proto"),
        "protoc",
    );
    assert!(
        gen.join("pkg/api/backup/v1/backup_service_grpc.pb.go")
            .exists(),
        "the stubs are generated under the go_package the protos declare"
    );
    for d in [&gen, &client] {
        sh(
            Command::new("go")
                .args(["mod", "tidy"])
                .current_dir(d)
                .env("GOFLAGS", "-mod=mod"),
            "go mod tidy",
        );
    }
    sh(
        Command::new("go")
            .args(["build", "-o", "monoctl-client", "."])
            .current_dir(&client),
        "go build",
    );
    client.join("monoctl-client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_client_calls_every_rpc_as_monoctl_would() {
    let Some(plugins) = service_env("TEST_GO_GEN_DIR") else {
        return;
    };
    let f = Fixture::new();
    let bin = build_client(f.dir.path(), &plugins);
    let (ca, cert, key) = crate::service::make_certs(f.dir.path());
    let (gw, gw_addr) = crate::auth_gateway::start_stand_in().await;
    let src = Devstore::start(&[]);
    store(&src, sample(200)).await;
    let catalog = f.catalog();
    let s = Server::start(
        &[
            "--event-store",
            &src.addr,
            "--destination",
            &f.dest,
            "--key-file",
            &f.key,
            "--catalog",
            &catalog,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--auth",
            "gateway",
            "--gateway",
            &gw_addr,
        ],
        &[],
    );
    let out = Command::new(&bin)
        .env("MBK_SERVER", &s.addr)
        .env("MBK_CA", &ca)
        .env("MBK_TOKEN", &gw.admin)
        .output()
        .expect("run the Go client");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for check in [
        "ok ListBackups without a token",
        "ok GetStatus",
        "ok CreateBackup wait",
        "ok CreateBackup result",
        "ok ListBackups lists the new backup",
        "ok Drill",
        "ok Restore into a store that holds events",
        "ok Restore without a backup id",
        "ok Restore of a malformed id",
        "ok Drill of an unknown backup",
    ] {
        assert!(text.contains(check), "{check:?} missing:\n{text}");
    }
    assert!(!text.contains("FAIL"), "{text}");
    // Every call but the token-less one went through the gateway's Check.
    assert!(gw.gw.seen.lock().expect("lock").len() >= 8);
}

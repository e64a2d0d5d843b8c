//! One suite for every blob backend: the local directory, and S3 against a real S3-compatible
//! server (`s3s-fs` serving a temporary directory on 127.0.0.1, spoken to over HTTP by
//! `aws-sdk-s3`), never a mock of the SDK.

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use invicta_blob::{BlobStore, Config, Error, S3Config};
use sha2::{Digest, Sha256};

type TestResult = anyhow::Result<()>;

async fn suite(blobs: &BlobStore) -> TestResult {
    // Put: content-addressed under the prefix.
    let a = blobs.put_bytes("components", b"hello component").await?;
    let expected_hash = hex::encode(Sha256::digest(b"hello component"));
    assert_eq!(a.sha256, expected_hash);
    assert_eq!(a.key, format!("components/{expected_hash}"));
    assert_eq!(a.size, 15);
    // The same bytes again are the same blob.
    assert_eq!(blobs.put_bytes("components", b"hello component").await?, a);

    // Streaming a large body (several upload chunks) keeps every byte.
    let big: Vec<u8> = (0..3_000_000_u32).map(|i| (i % 251) as u8).collect();
    let b = blobs.put("components", big.as_slice()).await?;
    assert_eq!(b.size, big.len() as u64);
    assert_eq!(blobs.get(&b.key).await?.as_ref(), big.as_slice());
    assert_eq!(blobs.get_verified(&b).await?.len(), big.len());

    // An empty blob is a blob.
    let empty = blobs.put_bytes("snapshots/w1", b"").await?;
    assert_eq!(blobs.get(&empty.key).await?.len(), 0);

    // Head and list.
    let head = blobs.head(&a.key).await?.expect("the blob is there");
    assert_eq!(head.size, a.size);
    assert_eq!(blobs.head("components/missing").await?, None);
    let listed: Vec<String> = blobs
        .list("components")
        .await?
        .into_iter()
        .map(|m| m.key)
        .collect();
    let mut expected = vec![a.key.clone(), b.key.clone()];
    expected.sort();
    assert_eq!(listed, expected);
    assert_eq!(blobs.list("snapshots").await?.len(), 1);
    assert!(blobs.list("nothing-here").await?.is_empty());

    // Missing blobs are typed errors.
    let missing = blobs.get("components/missing").await;
    assert!(
        matches!(missing, Err(Error::NotFound { .. })),
        "{missing:?}"
    );

    // Bad keys are refused before anything is touched.
    for bad in ["../escape", "a//b", "with space", ""] {
        assert!(
            matches!(blobs.get(bad).await, Err(Error::InvalidKey { .. })),
            "{bad}"
        );
        assert!(
            matches!(
                blobs.put_bytes(bad, b"x").await,
                Err(Error::InvalidKey { .. })
            ),
            "{bad}"
        );
    }

    // A reference whose content does not match is reported as corrupt.
    let mut wrong = a.clone();
    wrong.sha256 = "0".repeat(64);
    assert!(matches!(
        blobs.get_verified(&wrong).await,
        Err(Error::Corrupt { .. })
    ));

    // Delete, twice.
    blobs.delete(&a.key).await?;
    blobs.delete(&a.key).await?;
    assert_eq!(blobs.head(&a.key).await?, None);
    assert_eq!(blobs.list("components").await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn local_backend() -> TestResult {
    let dir = tempfile::tempdir()?;
    let blobs = BlobStore::open(&Config::local_in(dir.path())).await?;
    assert_eq!(blobs.backend_name(), "local");
    suite(&blobs).await?;
    // Nothing is left in staging once uploads are published.
    let staged = std::fs::read_dir(dir.path().join("blobs/.staging"))?.count();
    assert_eq!(staged, 0);
    Ok(())
}

/// Serves `root` as an S3 endpoint on an ephemeral loopback port; returns its URL.
async fn s3_server(root: &std::path::Path, access: &str, secret: &str) -> anyhow::Result<String> {
    let fs = s3s_fs::FileSystem::new(root).map_err(|e| anyhow::anyhow!("start s3s-fs: {e:?}"))?;
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(access, secret));
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let http = ConnBuilder::new(TokioExecutor::new());
        while let Ok((socket, _)) = listener.accept().await {
            let conn = http
                .serve_connection(TokioIo::new(socket), service.clone())
                .into_owned();
            tokio::spawn(conn);
        }
    });
    Ok(format!("http://{addr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_backend_against_a_real_server() -> TestResult {
    let root = tempfile::tempdir()?;
    std::fs::create_dir(root.path().join("invicta-test"))?; // the bucket
    let endpoint = s3_server(root.path(), "test-access", "test-secret").await?;
    let staging = tempfile::tempdir()?;
    let config = |secret: &str| {
        Config::S3(S3Config {
            bucket: "invicta-test".into(),
            endpoint: Some(endpoint.clone()),
            region: "us-east-1".into(),
            access_key_id: Some("test-access".into()),
            secret_access_key: Some(secret.into()),
            path_style: true,
            staging_dir: Some(staging.path().to_path_buf()),
        })
    };
    let blobs = BlobStore::open(&config("test-secret")).await?;
    assert_eq!(blobs.backend_name(), "s3");
    suite(&blobs).await?;
    // The bytes really are objects on the server's disk.
    let on_disk = walk(&root.path().join("invicta-test"));
    assert!(
        on_disk.iter().any(|p| p.ends_with("snapshots/w1")),
        "{on_disk:?}"
    );

    // Wrong credentials are an error from the server, not a silent success.
    let intruder = BlobStore::open(&config("wrong-secret")).await?;
    let denied = intruder.put_bytes("components", b"nope").await;
    assert!(matches!(denied, Err(Error::S3 { .. })), "{denied:?}");
    Ok(())
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(walk(&path));
                out.push(path.display().to_string());
            } else {
                out.push(path.display().to_string());
            }
        }
    }
    out
}

//! otter::fetch through a fault-injecting proxy in front of a real `docker-registry`: connection
//! cuts, stalls, 5xx/429, a server that ignores Range, a corrupted byte, and kill -9 mid-download.
//! Every download must end with the right digest while the bytes the proxy served stay close to
//! the blob size.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod source_util;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use otter::source::{self, ImageRef, ImageSource};
use source_util::proxy::{Faults, Proxy};
use source_util::*;

const BIG: usize = 20 * 1024 * 1024;
const MIB: u64 = 1024 * 1024;

struct Setup {
    _tmp_reg: Registry,
    img: Image,
    layout: std::path::PathBuf,
}

/// A registry holding `os/big:v1`: a ~20 MB random layer and two small ones.
fn setup(dir: &Path) -> Setup {
    let reg = Registry::start(
        &dir.join("reg"),
        RegistryOpts {
            tls: None,
            htpasswd: None,
        },
    );
    let layout = dir.join("layout");
    let big = tar_of(&[("usr/lib/big.bin", random_bytes(BIG, 7))]);
    let img = write_image(
        &layout,
        "amd64",
        "3.0",
        &[
            (LAYER_TAR, big),
            (LAYER_TAR, tar_of(&[("etc/a", random_bytes(200_000, 8))])),
            (
                LAYER_GZIP,
                gzip(&tar_of(&[("etc/b", random_bytes(300_000, 9))])),
            ),
        ],
    );
    write_index(&layout, &[tagged(&img.manifest, "v1")]);
    skopeo_push(
        &layout,
        "v1",
        &format!("docker://{}/os/big:v1", reg.host()),
        &[],
    );
    Setup {
        _tmp_reg: reg,
        img,
        layout,
    }
}

fn fetch_through(
    proxy: &Proxy,
    blob_dir: &Path,
    tweak: impl Fn(&mut source::SourceOptions),
) -> anyhow::Result<Box<dyn ImageSource>> {
    let mut opts = test_opts(blob_dir);
    tweak(&mut opts);
    let r: ImageRef = format!("docker://127.0.0.1:{}/os/big:v1", proxy.port).parse()?;
    let mut src = source::open(&r, &opts)?;
    let resolved = src.resolve()?;
    src.prefetch(&resolved.manifest.layers)?;
    Ok(src)
}

fn check_complete(s: &Setup, src: &mut dyn ImageSource, blob_dir: &Path) {
    for l in &s.img.layers {
        let data = read_blob(src, l).unwrap();
        assert_eq!(sha(&data), l.digest);
        assert_eq!(data, layout_blob(&s.layout, &l.digest));
    }
    let leftovers: Vec<String> = std::fs::read_dir(blob_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains('.'))
        .collect();
    assert!(
        leftovers.is_empty(),
        "download state left behind: {leftovers:?}"
    );
}

#[test]
fn faults_are_retried_and_served_bytes_stay_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let s = setup(tmp.path());
    let big = s.img.layers[0].clone();
    let size = big.size;
    let limit = |extra: u64| (size as f64 * 1.05) as u64 + extra;
    let faults = |f: Faults| Faults {
        target: big.digest.clone(),
        ..f
    };

    // (name, faults, extra bytes allowed beyond 1.05 x size, option tweak)
    type Tweak = fn(&mut source::SourceOptions);
    let no_tweak: Tweak = |_| {};
    let cases: Vec<(&str, Faults, u64, Tweak)> = vec![
        (
            "cut every 3 MiB",
            faults(Faults {
                cut_every: Some(3 * MIB),
                ..Default::default()
            }),
            0,
            no_tweak,
        ),
        (
            "stall after 5 MiB",
            faults(Faults {
                stall: Some((5 * MIB, Duration::from_secs(3))),
                ..Default::default()
            }),
            0,
            |o| o.read_timeout = Duration::from_millis(700),
        ),
        (
            "500, 503, 429, 502 first",
            faults(Faults {
                statuses: std::sync::Mutex::new([500, 503, 429, 502].into()),
                ..Default::default()
            }),
            0,
            no_tweak,
        ),
        (
            // after a cut at 8 MiB the server ignores Range: the known prefix is skipped, not rewritten
            "range ignored",
            faults(Faults {
                cut_once: Some(8 * MIB),
                ignore_range: true,
                ..Default::default()
            }),
            8 * MIB,
            no_tweak,
        ),
        (
            // a byte flipped at 15 MiB: found by comparing chunk hashes on a second pass
            "corrupted byte",
            faults(Faults {
                corrupt_at: Some(15 * MIB + 123),
                ..Default::default()
            }),
            16 * MIB,
            no_tweak,
        ),
        (
            "bandwidth cap with cuts",
            faults(Faults {
                cut_every: Some(7 * MIB),
                ..Default::default()
            }),
            0,
            |o| o.max_bytes_per_sec = Some(40 * MIB),
        ),
    ];
    for (i, (name, f, extra, tweak)) in cases.into_iter().enumerate() {
        let proxy = Proxy::start(s._tmp_reg.port, f);
        let blob_dir = tmp.path().join(format!("blobs{i}"));
        let start = Instant::now();
        let mut src =
            fetch_through(&proxy, &blob_dir, tweak).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let took = start.elapsed();
        check_complete(&s, src.as_mut(), &blob_dir);
        let served = proxy.served();
        eprintln!(
            "{name}: served {served} of {size} in {} requests, {took:?}",
            proxy.requests.load(std::sync::atomic::Ordering::SeqCst)
        );
        assert!(served >= size, "{name}: served {served} < {size}");
        assert!(
            served <= limit(extra),
            "{name}: served {served} bytes for a {size} byte blob"
        );
        if name.starts_with("bandwidth") {
            // 20 MiB at 40 MiB/s cannot take less than about half a second
            assert!(took >= Duration::from_millis(400), "{name}: {took:?}");
        }
    }

    // a second run finds every blob complete and downloads nothing
    let proxy = Proxy::start(s._tmp_reg.port, faults(Faults::default()));
    let mut src = fetch_through(&proxy, &tmp.path().join("blobs0"), |_| {}).unwrap();
    check_complete(&s, src.as_mut(), &tmp.path().join("blobs0"));
    assert_eq!(proxy.served(), 0);

    // a server that never recovers: a network error after the bounded retries
    let proxy = Proxy::start(
        s._tmp_reg.port,
        faults(Faults {
            statuses: std::sync::Mutex::new(vec![503; 50].into()),
            ..Default::default()
        }),
    );
    let e = fetch_through(&proxy, &tmp.path().join("blobs-fail"), |_| {})
        .map(|_| ())
        .unwrap_err();
    assert_eq!(
        otter::fetch::error_class(&e),
        Some(otter::fetch::ErrorClass::Network),
        "{e:#}"
    );
    assert!(format!("{e:#}").contains("HTTP 503"), "{e:#}");

    // not enough space: a typed error before anything is downloaded
    let proxy = Proxy::start(s._tmp_reg.port, faults(Faults::default()));
    let e = fetch_through(&proxy, &tmp.path().join("blobs-nospace"), |o| {
        o.space_headroom = u64::MAX / 2
    })
    .map(|_| ())
    .unwrap_err();
    assert_eq!(
        otter::fetch::error_class(&e),
        Some(otter::fetch::ErrorClass::NoSpace),
        "{e:#}"
    );
    assert_eq!(proxy.served(), 0);
}

const CHILD_ENV: &str = "OTTER_TEST_CHILD_FETCH";

/// Child-process entry point of `kill9_during_download_resumes` (does nothing unless that test
/// starts it with OTTER_TEST_CHILD_FETCH=<reference> and OTTER_TEST_BLOB_DIR=<dir>).
#[test]
fn child_entry_fetch() {
    let Ok(reference) = std::env::var(CHILD_ENV) else {
        return;
    };
    let blob_dir = std::env::var("OTTER_TEST_BLOB_DIR").unwrap();
    let mut opts = test_opts(Path::new(&blob_dir));
    opts.chunk_size = 128 * 1024;
    opts.concurrency = 3;
    let mut src = source::open(&reference.parse().unwrap(), &opts).unwrap();
    let resolved = src.resolve().unwrap();
    src.prefetch(&resolved.manifest.layers).unwrap();
}

#[test]
fn kill9_during_download_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let s = setup(tmp.path());
    let big = s.img.layers[0].clone();
    // paced so that kills land mid-download and socket buffers stay small
    let proxy = Proxy::start(
        s._tmp_reg.port,
        Faults {
            target: big.digest.clone(),
            pace: Some(6 * MIB),
            ..Default::default()
        },
    );
    let blob_dir = tmp.path().join("blobs");
    let reference = format!("docker://127.0.0.1:{}/os/big:v1", proxy.port);
    let spawn = |n: usize| {
        let log = std::fs::File::create(tmp.path().join(format!("child{n}.log"))).unwrap();
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "child_entry_fetch",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &reference)
            .env("OTTER_TEST_BLOB_DIR", &blob_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        ChildGuard(child)
    };
    // kill points: pseudo-random fractions of the blob, spread over the download
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    let r = random_bytes(24, seed);
    let mut points: Vec<u64> = (0..3)
        .map(|i| {
            let frac = 0.1
                + 0.8 * (u64::from_le_bytes(r[i * 8..i * 8 + 8].try_into().unwrap()) % 1000) as f64
                    / 1000.0;
            (big.size as f64 * frac) as u64
        })
        .collect();
    points.sort();
    eprintln!("kill points: {points:?} of {}", big.size);
    for (n, p) in points.iter().enumerate() {
        let mut child = spawn(n);
        let start = Instant::now();
        while proxy.served() < *p {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "child {n} made no progress"
            );
            if let Some(st) = child.0.try_wait().unwrap() {
                panic!(
                    "child {n} exited early ({st}): {}",
                    std::fs::read_to_string(tmp.path().join(format!("child{n}.log"))).unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        child.0.kill().unwrap(); // SIGKILL
        child.0.wait().unwrap();
        let hex = big.digest.strip_prefix("sha256:").unwrap();
        let plen = std::fs::metadata(blob_dir.join(format!("{hex}.partial")))
            .map(|m| m.len())
            .unwrap_or(0);
        let jlen = std::fs::read_to_string(blob_dir.join(format!("{hex}.journal")))
            .map(|j| j.matches(',').count())
            .unwrap_or(0);
        eprintln!(
            "killed child {n} at {} served bytes; partial {plen}, journal ~{jlen} entries",
            proxy.served()
        );
    }
    let mut child = spawn(9);
    let st = child.0.wait().unwrap();
    assert!(
        st.success(),
        "final run failed: {}",
        std::fs::read_to_string(tmp.path().join("child9.log")).unwrap()
    );
    let opts = test_opts(&blob_dir);
    let mut src = source::open(&reference.parse().unwrap(), &opts).unwrap();
    src.resolve().unwrap();
    check_complete(&s, src.as_mut(), &blob_dir);
    let served = proxy.served();
    eprintln!(
        "served {served} bytes for a {} byte blob over 3 kills",
        big.size
    );
    assert!(
        served as f64 <= big.size as f64 * 1.05,
        "served {served} bytes for a {} byte blob",
        big.size
    );
}

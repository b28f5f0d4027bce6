//! Upstreams of several endpoints, over loopback with real upstream
//! servers the tests start and stop: round robin (even and weighted),
//! least requests, an endpoint killed under load (no failed GET, no POST
//! twice), passive ejection and return, active checks, every endpoint
//! down, reloads that add and remove endpoints, and the configuration
//! findings.
use crate::common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Gateway;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use microgateway::config::{self, Env};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Each request's method and `x-test-mark`.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A test endpoint: answers `status` (200 by default) after `delay`,
/// `health_status` on `/health`; records each request's method and
/// `x-test-mark`; `kill` closes the listener and every connection.
struct Endpoint {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    seen: Seen,
    status: Arc<AtomicU16>,
    health_status: Arc<AtomicU16>,
    delay_ms: Arc<AtomicUsize>,
    health_hits: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
}

impl Endpoint {
    async fn start() -> Endpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(200));
        let health_status = Arc::new(AtomicU16::new(200));
        let delay_ms = Arc::new(AtomicUsize::new(0));
        let health_hits = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = watch::channel(false);
        let (h, s, st, hs, d, c) = (
            hits.clone(),
            seen.clone(),
            status.clone(),
            health_status.clone(),
            delay_ms.clone(),
            health_hits.clone(),
        );
        tokio::spawn(async move {
            let mut accept_stop = stopped.clone();
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => break,
                    },
                    _ = accept_stop.changed() => break,
                };
                let (h, s, st, hs, d, c) = (
                    h.clone(),
                    s.clone(),
                    st.clone(),
                    hs.clone(),
                    d.clone(),
                    c.clone(),
                );
                let mut conn_stop = stopped.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (h, s, st, hs, d, c) = (
                            h.clone(),
                            s.clone(),
                            st.clone(),
                            hs.clone(),
                            d.clone(),
                            c.clone(),
                        );
                        async move {
                            let health = req.uri().path() == "/health";
                            if health {
                                c.fetch_add(1, Ordering::SeqCst);
                            } else {
                                h.fetch_add(1, Ordering::SeqCst);
                                let id = req
                                    .headers()
                                    .get("x-test-mark")
                                    .map(|v| v.to_str().unwrap().to_owned());
                                s.lock().unwrap().push((req.method().to_string(), id));
                            }
                            let _ = req.into_body().collect().await;
                            let delay = d.load(Ordering::SeqCst) as u64;
                            if !health && delay > 0 {
                                tokio::time::sleep(Duration::from_millis(delay)).await;
                            }
                            let code = if health { &hs } else { &st }.load(Ordering::SeqCst);
                            let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
                            *response.status_mut() = http::StatusCode::from_u16(code).unwrap();
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let serving = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = serving => {}
                        _ = conn_stop.changed() => {}
                    }
                });
            }
        });
        Endpoint {
            addr,
            hits,
            seen,
            status,
            health_status,
            delay_ms,
            health_hits,
            stop,
        }
    }

    fn health_hits(&self) -> usize {
        self.health_hits.load(Ordering::SeqCst)
    }

    fn url(&self) -> String {
        format!("http://{}/api", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn kill(&self) {
        let _ = self.stop.send(true);
    }

    fn set_status(&self, code: u16) {
        self.status.store(code, Ordering::SeqCst);
    }

    fn set_health(&self, code: u16) {
        self.health_status.store(code, Ordering::SeqCst);
    }

    /// The ids of the POSTs this endpoint received.
    fn post_ids(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(method, _)| method == "POST")
            .filter_map(|(_, id)| id.clone())
            .collect()
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.kill();
    }
}

fn yaml(upstream: &str) -> String {
    format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0 }}
apis:
- name: Balanced
  version: "1.0"
  base_path: /b
  upstream:
{upstream}
  authentication: {{ type: none }}
  resources: ["GET /items", "POST /items"]
"#
    )
}

fn endpoints(list: &[(&Endpoint, u32)]) -> String {
    let mut out = String::from("    endpoints:\n");
    for (endpoint, weight) in list {
        out.push_str(&format!(
            "    - {{ url: \"{}\", weight: {weight} }}\n",
            endpoint.url()
        ));
    }
    out
}

async fn get(gw: &Gateway) -> u16 {
    gw.get("/b/items").await.status().as_u16()
}

fn series(name: &str, endpoint: &Endpoint) -> String {
    format!(
        "microgateway_{name}{{api=\"Balanced\",endpoint=\"{}\"}}",
        endpoint.url()
    )
}

/// Waits (at most 10 s) until `done` holds.
async fn until<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: not within 10 s");
}

#[tokio::test]
async fn round_robin_spreads_evenly_and_by_weight() {
    let (a, b, c) = (
        Endpoint::start().await,
        Endpoint::start().await,
        Endpoint::start().await,
    );
    let gw = Gateway::start(&yaml(&endpoints(&[(&a, 1), (&b, 1), (&c, 1)]))).await;
    for _ in 0..30 {
        assert_eq!(get(&gw).await, 200);
    }
    assert_eq!((a.hits(), b.hits(), c.hits()), (10, 10, 10));
    let text = gw.metrics().await;
    let ok = format!(
        "microgateway_upstream_requests_total{{api=\"Balanced\",endpoint=\"{}\",result=\"ok\"}}",
        a.url()
    );
    assert_eq!(common::metric(&text, &ok), 10, "{text}");
    assert_eq!(
        common::metric(&text, &series("upstream_endpoint_healthy", &a)),
        1
    );
    gw.shutdown().await;

    let (a, b, c) = (
        Endpoint::start().await,
        Endpoint::start().await,
        Endpoint::start().await,
    );
    let gw = Gateway::start(&yaml(&endpoints(&[(&a, 3), (&b, 1), (&c, 1)]))).await;
    for _ in 0..50 {
        assert_eq!(get(&gw).await, 200);
    }
    assert_eq!((a.hits(), b.hits(), c.hits()), (30, 10, 10));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_requests_prefers_the_idle_endpoint_to_a_slow_one() {
    let (slow, fast) = (Endpoint::start().await, Endpoint::start().await);
    slow.delay_ms.store(300, Ordering::SeqCst);
    let upstream = format!(
        "{}    balance: least_requests\n",
        endpoints(&[(&slow, 1), (&fast, 1)])
    );
    let gw = Arc::new(Gateway::start(&yaml(&upstream)).await);
    let mut workers = Vec::new();
    for _ in 0..4 {
        let gw = gw.clone();
        workers.push(tokio::spawn(async move {
            for _ in 0..15 {
                assert_eq!(get(&gw).await, 200);
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    assert_eq!(slow.hits() + fast.hits(), 60);
    assert!(
        fast.hits() > 3 * slow.hits(),
        "fast {} slow {}",
        fast.hits(),
        slow.hits()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_endpoint_fails_no_get_and_gets_no_post_twice() {
    let (a, b, c) = (
        Endpoint::start().await,
        Endpoint::start().await,
        Endpoint::start().await,
    );
    let upstream = format!(
        "{}    retry: {{ attempts: 2, on: [connect_failure, refused_stream] }}\n",
        endpoints(&[(&a, 1), (&b, 1), (&c, 1)])
    );
    let gw = Arc::new(Gateway::start(&yaml(&upstream)).await);
    let killed = Arc::new(AtomicBool::new(false));
    let next_id = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (gw, killed, next_id) = (gw.clone(), killed.clone(), next_id.clone());
        workers.push(tokio::spawn(async move {
            let (mut get_failures, mut post_ok, mut after_kill) = (0, 0, 0);
            while after_kill < 30 {
                if killed.load(Ordering::SeqCst) {
                    after_kill += 1;
                }
                if get(&gw).await != 200 {
                    get_failures += 1;
                }
                let id = next_id.fetch_add(1, Ordering::SeqCst).to_string();
                let status = gw
                    .request(reqwest::Method::POST, "/b/items")
                    .header("x-test-mark", &id)
                    .body("payload")
                    .send()
                    .await
                    .unwrap()
                    .status();
                if status == 200 {
                    post_ok += 1;
                }
            }
            (get_failures, post_ok)
        }));
    }
    until("requests before the kill", || async { b.hits() >= 20 }).await;
    b.kill();
    killed.store(true, Ordering::SeqCst);
    let hits_at_kill = b.hits();
    let mut posts_ok = 0;
    for worker in workers {
        let (get_failures, post_ok) = worker.await.unwrap();
        assert_eq!(get_failures, 0);
        posts_ok += post_ok;
    }
    // No POST reached two endpoints (or one twice).
    let mut ids: Vec<String> = [&a, &b, &c].iter().flat_map(|e| e.post_ids()).collect();
    let received = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), received, "a POST was sent twice");
    assert!(posts_ok > 0);
    // The killed endpoint got nothing more (at most what was on its way).
    assert!(b.hits() <= hits_at_kill + 8);
    assert!(a.hits() > 30 && c.hits() > 30);
}

/// An endpoint that reads each request (head and body) and closes the
/// connection without a byte of answer; counts the requests it read.
async fn dropping_endpoint() -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::AsyncReadExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let read = Arc::new(AtomicUsize::new(0));
    let counted = read.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    if buf.len() >= end + 4 + length {
                        counted.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
            });
        }
    });
    (addr, read)
}

#[tokio::test]
async fn a_post_that_reached_an_endpoint_is_never_sent_to_another() {
    let (dropping, read) = dropping_endpoint().await;
    let b = Endpoint::start().await;
    let upstream = format!(
        "    endpoints:\n    - url: \"http://{dropping}/api\"\n    - url: \"{}\"\n    retry: {{ attempts: 2 }}\n    health:\n      passive: {{ consecutive_failures: 100 }}\n",
        b.url()
    );
    let gw = Gateway::start(&yaml(&upstream)).await;
    // Round robin: the first request goes to the dropping endpoint.
    let post = gw
        .request(reqwest::Method::POST, "/b/items")
        .header("x-test-mark", "once")
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 502);
    assert_eq!(read.load(Ordering::SeqCst), 1);
    assert!(
        b.post_ids().is_empty(),
        "the POST went to one endpoint only"
    );
    // The second goes to `b`; the third to the dropping one first, and,
    // a bodiless GET unanswered, to `b` after it.
    assert_eq!(get(&gw).await, 200);
    assert_eq!(get(&gw).await, 200);
    assert_eq!(read.load(Ordering::SeqCst), 2);
    assert_eq!(b.hits(), 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_request_with_a_body_goes_to_another_endpoint_when_the_first_refuses() {
    let refusing = crate::common::Refusing::new();
    let closed = refusing.addr;
    let b = Endpoint::start().await;
    let upstream = format!(
        "    endpoints:\n    - url: \"http://{closed}/api\"\n    - url: \"{}\"\n    health:\n      passive: {{ consecutive_failures: 100 }}\n",
        b.url()
    );
    let gw = Gateway::start(&yaml(&upstream)).await;
    for i in 0..6 {
        let status = gw
            .request(reqwest::Method::POST, "/b/items")
            .header("x-test-mark", i.to_string())
            .body("payload")
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
    }
    let mut ids = b.post_ids();
    ids.sort();
    assert_eq!(ids, vec!["0", "1", "2", "3", "4", "5"]);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected_and_returns_after_eject_for() {
    let (a, b) = (Endpoint::start().await, Endpoint::start().await);
    a.set_status(503);
    let upstream = format!(
        "{}    health:\n      passive: {{ consecutive_failures: 3, eject_for: 1s, max_ejected: 50% }}\n",
        endpoints(&[(&a, 1), (&b, 1)])
    );
    let gw = Gateway::start(&yaml(&upstream)).await;
    // a, b, a, b, a: the third 503 of `a` ejects it.
    let statuses: Vec<u16> = {
        let mut out = Vec::new();
        for _ in 0..5 {
            out.push(get(&gw).await);
        }
        out
    };
    assert_eq!(statuses, vec![503, 200, 503, 200, 503]);
    assert_eq!(a.hits(), 3);
    let text = gw.metrics().await;
    assert_eq!(
        common::metric(&text, &series("upstream_endpoint_healthy", &a)),
        0
    );
    let error_status = format!(
        "microgateway_upstream_requests_total{{api=\"Balanced\",endpoint=\"{}\",result=\"error_status\"}}",
        a.url()
    );
    assert_eq!(common::metric(&text, &error_status), 3);
    let assets: serde_json::Value = gw
        .client
        .get(gw.admin_url("/rest/microgateway/assets"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed = &assets["apis"][0]["upstream"]["endpoints"];
    assert_eq!(listed[0]["url"], a.url());
    assert_eq!(listed[0]["state"], "ejected");
    assert_eq!(listed[1]["state"], "healthy");
    // Ejected: everything goes to `b`.
    for _ in 0..6 {
        assert_eq!(get(&gw).await, 200);
    }
    assert_eq!(a.hits(), 3);
    // Healthy again: after `eject_for`, one trial request, then traffic.
    a.set_status(200);
    until("the trial request", || async {
        get(&gw).await;
        a.hits() > 3
    })
    .await;
    let text = gw.metrics().await;
    assert_eq!(
        common::metric(&text, &series("upstream_endpoint_healthy", &a)),
        1
    );
    let before = a.hits();
    for _ in 0..4 {
        assert_eq!(get(&gw).await, 200);
    }
    assert_eq!(a.hits(), before + 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_failed_trial_ejects_the_endpoint_again() {
    let (a, b) = (Endpoint::start().await, Endpoint::start().await);
    a.kill();
    let upstream = format!(
        "{}    health:\n      passive: {{ consecutive_failures: 1, eject_for: 200ms }}\n",
        endpoints(&[(&a, 1), (&b, 1)])
    );
    let gw = Gateway::start(&yaml(&upstream)).await;
    // Connect failures go to `b` (retried there) and eject `a`.
    for _ in 0..20 {
        assert_eq!(get(&gw).await, 200);
    }
    assert_eq!(b.hits(), 20);
    let text = gw.metrics().await;
    let failures = format!(
        "microgateway_upstream_requests_total{{api=\"Balanced\",endpoint=\"{}\",result=\"connect_failure\"}}",
        a.url()
    );
    // One failure ejected it; each later trial failed once.
    let tried = common::metric(&text, &failures);
    assert!((1..=3).contains(&tried), "{tried}");
    gw.shutdown().await;
}

#[tokio::test]
async fn active_checks_mark_an_endpoint_down_and_up() {
    let (a, b) = (Endpoint::start().await, Endpoint::start().await);
    let upstream = format!(
        "{}    health:\n      active: {{ path: /health, interval: 100ms, timeout: 1s, healthy: 2, unhealthy: 2 }}\n",
        endpoints(&[(&a, 1), (&b, 1)])
    );
    let gw = Gateway::start(&yaml(&upstream)).await;
    let healthy = series("upstream_endpoint_healthy", &a);
    a.set_health(500);
    until("marked down", || async {
        common::metric(&gw.metrics().await, &healthy) == 0 && gw.metrics().await.contains(&healthy)
    })
    .await;
    let before = a.hits();
    for _ in 0..6 {
        assert_eq!(get(&gw).await, 200);
    }
    assert_eq!(a.hits(), before);
    a.set_health(200);
    until("marked up", || async {
        common::metric(&gw.metrics().await, &healthy) == 1
    })
    .await;
    for _ in 0..6 {
        assert_eq!(get(&gw).await, 200);
    }
    assert_eq!(a.hits(), before + 3);
    gw.shutdown().await;
}

#[tokio::test]
async fn active_checks_stop_when_their_endpoint_leaves_the_configuration() {
    let (a, b) = (Endpoint::start().await, Endpoint::start().await);
    let active = "    health:\n      active: { path: /health, interval: 100ms }\n";
    let gw = Gateway::start(&yaml(&format!(
        "{}{active}",
        endpoints(&[(&a, 1), (&b, 1)])
    )))
    .await;
    until("checks on both", || async {
        a.health_hits() >= 2 && b.health_hits() >= 2
    })
    .await;
    gw.write_config(&yaml(&format!("{}{active}", endpoints(&[(&b, 1)]))));
    gw.wait_generation(2).await;
    // A check on its way when the reload came may still land.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (a_checks, b_checks) = (a.health_hits(), b.health_hits());
    until("more checks on the kept endpoint", || async {
        b.health_hits() >= b_checks + 3
    })
    .await;
    assert_eq!(
        a.health_hits(),
        a_checks,
        "no check of the removed endpoint"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn every_endpoint_down_is_a_502_not_a_hang() {
    let (x, y) = (
        crate::common::Refusing::new(),
        crate::common::Refusing::new(),
    );
    let (x, y) = (&x.addr, &y.addr);
    let upstream = format!(
        "    endpoints:\n    - url: \"http://{x}/api\"\n    - url: \"http://{y}/api\"\n    health:\n      passive: {{ consecutive_failures: 1 }}\n"
    );
    let gw = Gateway::start(&yaml(&upstream)).await;
    for _ in 0..6 {
        let status = tokio::time::timeout(Duration::from_secs(20), get(&gw))
            .await
            .expect("an answer, not a hang");
        assert_eq!(status, 502);
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_and_removes_endpoints_without_dropping_requests() {
    let (a, b, c) = (
        Endpoint::start().await,
        Endpoint::start().await,
        Endpoint::start().await,
    );
    let gw = Arc::new(Gateway::start(&yaml(&endpoints(&[(&a, 1), (&b, 1)]))).await);
    let done = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..2 {
        let (gw, done) = (gw.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let mut statuses: HashMap<u16, usize> = HashMap::new();
            while !done.load(Ordering::SeqCst) {
                *statuses.entry(get(&gw).await).or_default() += 1;
            }
            statuses
        }));
    }
    until("traffic on both", || async { a.hits() > 5 && b.hits() > 5 }).await;
    gw.write_config(&yaml(&endpoints(&[(&b, 1), (&c, 1)])));
    gw.wait_generation(2).await;
    until("traffic on the new endpoint", || async { c.hits() > 10 }).await;
    let a_after = a.hits();
    until("more traffic", || async { c.hits() > 30 }).await;
    done.store(true, Ordering::SeqCst);
    for worker in workers {
        let statuses = worker.await.unwrap();
        assert_eq!(
            statuses.keys().copied().collect::<Vec<_>>(),
            vec![200],
            "{statuses:?}"
        );
    }
    // The removed endpoint gets nothing (but what was on its way).
    assert!(a.hits() <= a_after + 2);
    let text = gw.metrics().await;
    assert!(!text.contains(&a.url()), "its series went with it");
    assert!(text.contains(&c.url()));
}

#[tokio::test]
async fn a_reload_keeps_the_health_of_the_endpoints_it_keeps() {
    let (a, b, c) = (
        Endpoint::start().await,
        Endpoint::start().await,
        Endpoint::start().await,
    );
    a.set_status(503);
    let passive = "    health:\n      passive: { consecutive_failures: 2, eject_for: 1h, max_ejected: 100% }\n";
    let gw = Gateway::start(&yaml(&format!(
        "{}{passive}",
        endpoints(&[(&a, 1), (&b, 1)])
    )))
    .await;
    for _ in 0..4 {
        get(&gw).await;
    }
    assert_eq!(a.hits(), 2);
    gw.write_config(&yaml(&format!(
        "{}{passive}",
        endpoints(&[(&a, 1), (&b, 1), (&c, 1)])
    )));
    gw.wait_generation(2).await;
    for _ in 0..10 {
        assert_eq!(get(&gw).await, 200);
    }
    assert_eq!(a.hits(), 2, "still ejected after the reload");
    assert_eq!(b.hits() + c.hits(), 12);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_host_name_endpoint_is_resolved_on_connect() {
    let (a, b) = (Endpoint::start().await, Endpoint::start().await);
    let upstream = format!(
        "    endpoints:\n    - url: \"http://localhost:{}/api\"\n    - url: \"{}\"\n    dns_ttl: 5s\n",
        a.addr.port(),
        b.url()
    );
    let gw = Gateway::start(&yaml(&upstream)).await;
    for _ in 0..10 {
        assert_eq!(get(&gw).await, 200);
    }
    assert_eq!((a.hits(), b.hits()), (5, 5));
    gw.shutdown().await;
}

fn findings(upstream: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("microgateway.yaml");
    std::fs::write(&path, yaml(upstream)).unwrap();
    match config::load(&path, &Env::new(), 1) {
        Ok(_) => Vec::new(),
        Err(invalid) => invalid.findings.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn endpoint_settings_are_checked_with_their_position() {
    let both = findings(
        "    url: \"http://127.0.0.1:1/api\"\n    endpoints:\n    - url: \"http://127.0.0.1:2/api\"\n",
    );
    assert!(
        both.iter()
            .any(|f| f.contains(":9:") && f.contains("both `url` and `endpoints`")),
        "{both:?}"
    );
    let weight = findings("    endpoints:\n    - { url: \"http://127.0.0.1:2/api\", weight: 0 }\n");
    assert!(
        weight
            .iter()
            .any(|f| f.contains("weight: 0 is out of bounds")
                && f.contains("allowed: an integer from 1 to 100")),
        "{weight:?}"
    );
    let balance =
        findings("    endpoints:\n    - url: \"http://127.0.0.1:2/api\"\n    balance: random\n");
    assert!(
        balance
            .iter()
            .any(|f| f.contains("balance `random` is not known")),
        "{balance:?}"
    );
    let retry = findings(
        "    endpoints:\n    - url: \"http://127.0.0.1:2/api\"\n    retry: { attempts: 9, on: [timeout] }\n",
    );
    assert!(
        retry.iter().any(|f| f.contains("retry.attempts: 9")),
        "{retry:?}"
    );
    assert!(
        retry
            .iter()
            .any(|f| f.contains("retry.on `timeout` is not known")),
        "{retry:?}"
    );
    let twice = findings(
        "    endpoints:\n    - url: \"http://127.0.0.1:2/api\"\n    - url: \"http://127.0.0.1:2/api/\"\n",
    );
    assert!(
        twice.iter().any(|f| f.contains("is listed twice")),
        "{twice:?}"
    );
    let active = findings(
        "    endpoints:\n    - url: \"http://127.0.0.1:2/api\"\n    health: { active: { path: health, interval: 1s, timeout: 5s } }\n",
    );
    assert!(
        active.iter().any(|f| f.contains("is not a request path")),
        "{active:?}"
    );
    let max = findings(
        "    endpoints:\n    - url: \"http://127.0.0.1:2/api\"\n    health: { passive: { max_ejected: 150% } }\n",
    );
    assert!(
        max.iter().any(|f| f.contains("is not a percentage")),
        "{max:?}"
    );
    assert!(findings(&endpoints_of(&["http://127.0.0.1:2/api"])).is_empty());
    // Outbound credentials over plain HTTP to a host that is not loopback.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("microgateway.yaml");
    let text = yaml(&endpoints_of(&["https://10.0.0.1/api", "http://10.0.0.2/api"])).replace(
        "  authentication: { type: none }",
        "  authentication: { type: none }\n  policies: { outbound_auth: { type: basic, username: u, password: p } }",
    );
    std::fs::write(&path, text).unwrap();
    let Err(refused) = config::load(&path, &Env::new(), 1) else {
        panic!("accepted");
    };
    let refused: Vec<String> = refused.findings.iter().map(ToString::to_string).collect();
    assert!(
        refused.len() == 1
            && refused[0].contains("`http://10.0.0.2/api` would carry outbound credentials"),
        "{refused:?}"
    );
}

fn endpoints_of(urls: &[&str]) -> String {
    let mut out = String::from("    endpoints:\n");
    for url in urls {
        out.push_str(&format!("    - url: \"{url}\"\n"));
    }
    out
}

#[test]
fn explain_names_the_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("microgateway.yaml");
    let upstream = "    endpoints:\n    - { url: \"http://10.0.0.11:8081/api\", weight: 2 }\n    - url: \"http://10.0.0.12:8081/api\"\n    balance: least_requests\n";
    std::fs::write(&path, yaml(upstream)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_microgateway"))
        .env_clear()
        .args(["explain", "-c", path.to_str().unwrap(), "GET", "/b/items"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "endpoints:  http://10.0.0.11:8081/api (weight 2), http://10.0.0.12:8081/api (weight 1) (least_requests)\n"
        ),
        "{text}"
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
}

/// Each try goes to an endpoint not tried yet: with every endpoint tried,
/// a request that broke them is not sent again, whatever
/// `retry.attempts` allows (a request that crashes its upstream would
/// otherwise crash it once per attempt).
#[tokio::test]
async fn a_request_is_not_sent_again_to_an_endpoint_it_was_tried_on() {
    let (dropping, read) = dropping_endpoint().await;
    let (other, read_other) = dropping_endpoint().await;
    let one = format!(
        "    url: \"http://{dropping}/api\"\n    retry: {{ attempts: 5 }}\n    health:\n      passive: {{ consecutive_failures: 100 }}\n"
    );
    let gw = Gateway::start(&yaml(&one)).await;
    assert_eq!(get(&gw).await, 502);
    assert_eq!(read.load(Ordering::SeqCst), 1, "one endpoint, one try");
    gw.shutdown().await;
    let two = format!(
        "    endpoints:\n    - url: \"http://{dropping}/api\"\n    - url: \"http://{other}/api\"\n    retry: {{ attempts: 5 }}\n    health:\n      passive: {{ consecutive_failures: 100 }}\n"
    );
    let gw = Gateway::start(&yaml(&two)).await;
    assert_eq!(get(&gw).await, 502);
    assert_eq!(
        read.load(Ordering::SeqCst) + read_other.load(Ordering::SeqCst),
        3,
        "two endpoints, one try each"
    );
    assert_eq!(read_other.load(Ordering::SeqCst), 1);
    gw.shutdown().await;
}

/// An endpoint that accepts connections and never sends a byte (a TLS
/// handshake with it never ends); counts the connections it accepted.
async fn silent_endpoint() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    (addr, accepted)
}

/// The tries of one request share one `timeout` for connecting: a try
/// whose connecting spent it is not followed by another, so retries never
/// multiply the wait before the 504.
#[tokio::test]
async fn retries_share_the_upstream_timeout_for_connecting() {
    let (x, x_accepted) = silent_endpoint().await;
    let (y, y_accepted) = silent_endpoint().await;
    let upstream = format!(
        "    endpoints:\n    - url: \"https://{x}/api\"\n    - url: \"https://{y}/api\"\n    timeout: 1s\n    retry: {{ attempts: 2 }}\n    health:\n      passive: {{ consecutive_failures: 100 }}\n"
    );
    let gw = Gateway::start(&yaml(&upstream)).await;
    assert_eq!(get(&gw).await, 504);
    assert_eq!(
        x_accepted.load(Ordering::SeqCst) + y_accepted.load(Ordering::SeqCst),
        1,
        "one try: the handshake of the first spent the timeout"
    );
    gw.shutdown().await;
}

/// An endpoint that answers each request with a head promising
/// `Content-Length: 100`, sends `abc` and resets the connection; counts
/// the requests it answered so.
async fn cutting_endpoint() -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answered = Arc::new(AtomicUsize::new(0));
    let counted = answered.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let Ok(n @ 1..) = stream.read(&mut buf).await else {
                        return;
                    };
                    head.extend_from_slice(&buf[..n]);
                }
                counted.fetch_add(1, Ordering::SeqCst);
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc";
                let _ = stream.write_all(answer).await;
                let _ = stream.flush().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                let linger = Some(Duration::ZERO);
                socket2::SockRef::from(&stream).set_linger(linger).unwrap();
            });
        }
    });
    (addr, answered)
}

/// The state and requests in flight of each endpoint, as the admin API
/// lists them.
async fn listed(gw: &Gateway) -> Vec<(String, u64)> {
    let assets: serde_json::Value = gw
        .client
        .get(gw.admin_url("/rest/microgateway/assets"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let endpoints = assets["apis"][0]["upstream"]["endpoints"]
        .as_array()
        .unwrap()
        .clone();
    endpoints
        .iter()
        .map(|e| {
            let state = e["state"].as_str().unwrap().to_owned();
            (state, e["in_flight"].as_u64().unwrap())
        })
        .collect()
}

/// An answer whose body the endpoint cuts (reset after its head) is a
/// failure for passive health and for `upstream_requests_total`, not the
/// success its status said.
#[tokio::test]
async fn an_endpoint_that_cuts_its_answers_is_ejected() {
    let (cutting, answered) = cutting_endpoint().await;
    let b = Endpoint::start().await;
    let cutting_url = format!("http://{cutting}/api");
    let upstream = format!(
        "    endpoints:\n    - url: \"{cutting_url}\"\n    - url: \"{}\"\n    health:\n      passive: {{ consecutive_failures: 2, eject_for: 5s }}\n",
        b.url()
    );
    let gw = Gateway::start(&yaml(&upstream)).await;
    for _ in 0..6 {
        let response = gw.get("/b/items").await;
        assert_eq!(response.status(), 200);
        // The cut answers end in an error; `b`'s are whole.
        let _ = response.bytes().await;
    }
    // a, b, a: the second cut answer ejected it; the rest went to `b`.
    assert_eq!(answered.load(Ordering::SeqCst), 2);
    assert_eq!(b.hits(), 4);
    let text = gw.metrics().await;
    let result = |result: &str| {
        format!(
            "microgateway_upstream_requests_total{{api=\"Balanced\",endpoint=\"{cutting_url}\",result=\"{result}\"}}"
        )
    };
    assert_eq!(common::metric(&text, &result("failure")), 2, "{text}");
    assert_eq!(common::metric(&text, &result("ok")), 0, "{text}");
    let states: Vec<String> = listed(&gw).await.into_iter().map(|(s, _)| s).collect();
    assert_eq!(states, ["ejected", "healthy"]);
    gw.shutdown().await;
}

/// An endpoint that answers each request with a head promising ten bytes
/// and the first of them, and sends the other nine once `release` is
/// set.
async fn streaming_endpoint(release: watch::Receiver<bool>) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut release = release.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    let mut head = Vec::new();
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        let Ok(n @ 1..) = stream.read(&mut buf).await else {
                            return;
                        };
                        head.extend_from_slice(&buf[..n]);
                    }
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\na";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                    if release.wait_for(|released| *released).await.is_err() {
                        return;
                    }
                    if stream.write_all(b"bcdefghij").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// An endpoint has a request in flight until its answer's body has ended
/// (a long download, a stream of events), not only until the head: the
/// admin API (and `least_requests`) see it busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_has_a_request_in_flight_until_its_answer_has_ended() {
    let (release, released) = watch::channel(false);
    let streaming = streaming_endpoint(released).await;
    let upstream = format!(
        "    endpoints:\n    - url: \"http://{streaming}/api\"\n    balance: least_requests\n"
    );
    let gw = Gateway::start(&yaml(&upstream)).await;
    let mut responses = Vec::new();
    for _ in 0..4 {
        let response = gw.get("/b/items").await;
        assert_eq!(response.status(), 200);
        responses.push(response);
    }
    assert_eq!(listed(&gw).await, [("healthy".to_owned(), 4)]);
    release.send(true).unwrap();
    for response in responses {
        assert_eq!(&response.bytes().await.unwrap()[..], b"abcdefghij");
    }
    until("no request in flight", || async {
        listed(&gw).await == [("healthy".to_owned(), 0)]
    })
    .await;
    gw.shutdown().await;
}

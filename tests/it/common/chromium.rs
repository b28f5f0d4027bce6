//! A real headless Chromium (Debian `chromium` and `chromium-driver`,
//! installed by `.ci/run`), driven over the W3C WebDriver protocol with
//! the tests' HTTP client: `chromedriver` on a free loopback port, one
//! browser session with its own profile, both ended on drop.
//!
//! Scripts run through WebDriver are not the page's: its CSP (no script)
//! stays in force for the page itself.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// WebDriver's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Chromium {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Chromium {
    /// Starts chromedriver and a headless browser (up to 60 s).
    pub async fn start() -> Chromium {
        let port = super::ports::unused();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian chromium-driver; .ci/run installs it)");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = http.get(format!("{base}/status")).send().await;
            if let Ok(response) = ready {
                let status: Value = response.json().await.unwrap_or_default();
                if status["value"]["ready"] == true {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().expect("profile dir");
        let mut options = json!({
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-dev-shm-usage",
                "--disable-gpu",
                "--no-first-run",
                "--window-size=1280,800",
                format!("--user-data-dir={}", profile.path().display()),
            ]
        });
        if std::path::Path::new("/usr/bin/chromium").exists() {
            options["binary"] = json!("/usr/bin/chromium");
        }
        let mut chromium = Chromium {
            driver,
            base,
            session: String::new(),
            http,
            _profile: profile,
        };
        let created = chromium
            .call(
                reqwest::Method::POST,
                "/session",
                json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": options}}}),
            )
            .await;
        chromium.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {created}"))
            .to_owned();
        chromium
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if !body.is_null() {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {path}: {e}"));
        let status = response.status();
        let value: Value = response.json().await.expect("WebDriver JSON");
        assert!(status.is_success(), "WebDriver {path}: {status} {value}");
        value["value"].clone()
    }

    async fn session_call(&self, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.call(reqwest::Method::POST, &path, body).await
    }

    /// Emulates a device `width` × `height` CSS pixels wide (a phone's
    /// viewport when `mobile`: the page's viewport meta applies).
    pub async fn viewport(&self, width: u32, height: u32, mobile: bool) {
        let params = json!({
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile
        });
        self.session_call(
            "/goog/cdp/execute",
            json!({"cmd": "Emulation.setDeviceMetricsOverride", "params": params}),
        )
        .await;
    }

    /// Navigates and waits for the page to load.
    pub async fn goto(&self, url: &str) {
        self.session_call("/url", json!({ "url": url })).await;
    }

    pub async fn current_url(&self) -> String {
        let path = format!("/session/{}/url", self.session);
        let url = self.call(reqwest::Method::GET, &path, Value::Null).await;
        url.as_str().unwrap_or_default().to_owned()
    }

    /// Runs `script` (a function body; `arguments` holds `args`).
    pub async fn eval(&self, script: &str, args: Value) -> Value {
        self.session_call("/execute/sync", json!({"script": script, "args": args}))
            .await
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .session_call("/element", json!({"using": "css selector", "value": css}))
            .await;
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_owned()
    }

    /// Types `text` into the field `css`.
    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.session_call(&format!("/element/{id}/value"), json!({ "text": text }))
            .await;
    }

    /// Clicks `css` (a submit button: waits for the next page).
    pub async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.session_call(&format!("/element/{id}/click"), json!({}))
            .await;
    }

    /// Waits up to 20 s for the loaded page to have `css`.
    pub async fn wait_for(&self, css: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = self
                .eval(
                    "return document.readyState === 'complete'
                       && document.querySelector(arguments[0]) !== null",
                    json!([css]),
                )
                .await;
            if found == true {
                return;
            }
            let url = self.current_url().await;
            assert!(Instant::now() < deadline, "no {css} on {url}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// How the page lays out: horizontal overflow and where `css` is.
    pub async fn layout(&self, css: &str) -> Layout {
        let value = self
            .eval(
                "const el = document.querySelector(arguments[0]);
                 const doc = document.documentElement;
                 const out = {
                   scroll_width: Math.max(doc.scrollWidth, document.body.scrollWidth),
                   viewport_width: window.innerWidth,
                   viewport_height: window.innerHeight,
                   visible: false,
                   bottom: -1,
                 };
                 if (el) {
                   const r = el.getBoundingClientRect();
                   out.bottom = r.bottom;
                   const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
                   out.visible = r.width > 0 && r.height > 0 && r.left >= 0 && r.top >= 0
                     && r.right <= window.innerWidth && r.bottom <= window.innerHeight
                     && (hit === el || el.contains(hit));
                 }
                 return out;",
                json!([css]),
            )
            .await;
        let number = |key: &str| value[key].as_f64().unwrap_or(f64::NAN);
        Layout {
            scroll_width: number("scroll_width"),
            viewport_width: number("viewport_width"),
            viewport_height: number("viewport_height"),
            visible: value["visible"] == true,
            bottom: number("bottom"),
        }
    }
}

/// What [`Chromium::layout`] measured, in CSS pixels.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub scroll_width: f64,
    pub viewport_width: f64,
    pub viewport_height: f64,
    /// The element is inside the viewport, unscrolled, and not covered.
    pub visible: bool,
    /// The element's bottom edge (-1: not found).
    pub bottom: f64,
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // Ending the session ends the browser (a blocking request: drop
        // cannot wait for a future); then the driver goes.
        if !self.session.is_empty() {
            let addr = self.base.trim_start_matches("http://").to_owned();
            if let Ok(mut stream) = std::net::TcpStream::connect(&addr) {
                use std::io::{Read, Write};
                let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
                let _ = write!(
                    stream,
                    "DELETE /session/{} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                    self.session
                );
                let _ = stream.read_to_end(&mut Vec::new());
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

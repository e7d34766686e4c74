//! A headless Chromium driven over the W3C WebDriver protocol by Debian's
//! `chromedriver`, with the few commands the console's browser tests use,
//! sent with the raw HTTP/1.1 client of this harness (no WebDriver crate
//! to build). Missing Chromium or chromedriver: the test says SKIPPED and
//! passes, unless `PORTCULLIS_REQUIRE_CHROMIUM` (CI) makes it fail.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use super::send;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The id of an element reference (`{"element-6066-…": id}`: the
/// reference's one value, whatever the constant key).
fn element_id(reference: &Value) -> Option<String> {
    reference
        .as_object()?
        .values()
        .find_map(Value::as_str)
        .map(str::to_owned)
}

/// A browser session; the driver and the browser end on drop.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

/// Keys of the WebDriver keyboard.
pub const TAB: &str = "\u{E004}";
pub const ENTER: &str = "\u{E007}";

impl Browser {
    /// A new headless Chromium, or `None` (after saying SKIPPED) when it
    /// is not installed and not required.
    pub fn start(test: &str) -> Option<Browser> {
        let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
            .into_iter()
            .filter(|p| !Path::new(p).exists())
            .collect();
        if !missing.is_empty() {
            let required =
                std::env::var_os("PORTCULLIS_REQUIRE_CHROMIUM").is_some_and(|v| !v.is_empty());
            assert!(
                !required,
                "{test}: PORTCULLIS_REQUIRE_CHROMIUM is set and {} is missing \
                 (apt-get install -y chromium chromium-driver)",
                missing.join(", ")
            );
            eprintln!(
                "SKIPPED {test}: {} missing (apt-get install -y chromium chromium-driver)",
                missing.join(", ")
            );
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start chromedriver");
        let mut browser = Browser {
            driver,
            port,
            session: String::new(),
            _profile: tempfile::tempdir().expect("tempdir"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while super::try_send(port, "GET", b"/status", &[]).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = browser._profile.path().display().to_string();
        let started = browser.command(
            "POST",
            "/session",
            &json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": [
                        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync",
                        "--window-size=1280,1000",
                        format!("--user-data-dir={profile}"),
                    ],
                },
            }}}),
        );
        browser.session = started["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {started}"))
            .to_owned();
        Some(browser)
    }

    /// One WebDriver command; its `value`.
    fn command(&self, method: &str, path: &str, body: &Value) -> Value {
        self.try_command(method, path, body)
            .unwrap_or_else(|refused| panic!("{method} {path}: {refused}"))
    }

    /// One WebDriver command; its `value`, or what the driver said
    /// instead.
    fn try_command(&self, method: &str, path: &str, body: &Value) -> Result<Value, String> {
        let body = if method == "GET" || method == "DELETE" {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        let host = format!("127.0.0.1:{}", self.port);
        let response = send(
            self.port,
            method,
            path,
            &[("Host", &host), ("Content-Type", "application/json")],
            &body,
        );
        let Some(value) = response.json() else {
            return Err(response.text());
        };
        let value = value.get("value").cloned().unwrap_or(Value::Null);
        if response.status != 200 {
            return Err(format!("{} {value}", response.status));
        }
        Ok(value)
    }

    fn session_command(&self, method: &str, path: &str, body: &Value) -> Value {
        self.command(method, &format!("/session/{}{path}", self.session), body)
    }

    pub fn go(&self, url: &str) {
        self.session_command("POST", "/url", &json!({ "url": url }));
    }

    pub fn url(&self) -> String {
        self.session_command("GET", "/url", &Value::Null)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The page's HTML as the browser holds it now.
    pub fn source(&self) -> String {
        self.session_command("GET", "/source", &Value::Null)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The elements `css` selects now.
    pub fn all(&self, css: &str) -> Vec<String> {
        let found = self.session_command(
            "POST",
            "/elements",
            &json!({"using": "css selector", "value": css}),
        );
        found
            .as_array()
            .map(|list| list.iter().filter_map(element_id).collect())
            .unwrap_or_default()
    }

    /// The one element `css` selects (panics when none does).
    pub fn find(&self, css: &str) -> String {
        self.all(css)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no element {css} on {}", self.url()))
    }

    /// The text of the element `css` selects, waiting for it (at most 10 s).
    pub fn text_of(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(element) = self.all(css).into_iter().next() {
                return self.text(&element);
            }
            assert!(Instant::now() < deadline, "no {css} on {}", self.url());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn text(&self, element: &str) -> String {
        self.session_command("GET", &format!("/element/{element}/text"), &Value::Null)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Replaces what the field `css` holds with `text`.
    pub fn fill(&self, css: &str, text: &str) {
        let element = self.find(css);
        self.session_command("POST", &format!("/element/{element}/clear"), &json!({}));
        self.session_command(
            "POST",
            &format!("/element/{element}/value"),
            &json!({ "text": text }),
        );
    }

    pub fn click(&self, css: &str) {
        let element = self.find(css);
        self.session_command("POST", &format!("/element/{element}/click"), &json!({}));
    }

    /// Clicks `css`, a button or link that leads to another page, and
    /// returns once that page has loaded.
    pub fn follow(&self, css: &str) {
        self.leaving(css, || self.click(css));
    }

    /// Types `keys` that leave the page (Enter on a submit button), and
    /// returns once the next page has loaded.
    pub fn follow_keys(&self, keys: &str) {
        self.leaving("the keys", || self.keys(keys));
    }

    /// Does `act` and waits (at most 20 s) for the page it leads to. A
    /// click's command may return before the browser has left the page,
    /// so the old document gets a mark the next one does not have.
    fn leaving(&self, what: &str, act: impl FnOnce()) {
        self.script("window.portcullisLeft = false;");
        act();
        let deadline = Instant::now() + Duration::from_secs(20);
        let arrived = "return window.portcullisLeft === undefined \
                       && document.readyState === 'complete';";
        while self.try_script(arrived) != Some(Value::Bool(true)) {
            assert!(
                Instant::now() < deadline,
                "{what} did not lead away from {}",
                self.url()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `source` in the page; its result.
    fn script(&self, source: &str) -> Value {
        self.session_command(
            "POST",
            "/execute/sync",
            &json!({"script": source, "args": []}),
        )
    }

    /// As `script`, but `None` while the browser cannot run it (between
    /// two pages).
    fn try_script(&self, source: &str) -> Option<Value> {
        self.try_command(
            "POST",
            &format!("/session/{}/execute/sync", self.session),
            &json!({"script": source, "args": []}),
        )
        .ok()
    }

    /// Types `keys` on the keyboard, to whatever has the focus.
    pub fn keys(&self, keys: &str) {
        let mut actions = Vec::new();
        for key in keys.chars() {
            actions.push(json!({"type": "keyDown", "value": key.to_string()}));
            actions.push(json!({"type": "keyUp", "value": key.to_string()}));
        }
        self.session_command(
            "POST",
            "/actions",
            &json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]}),
        );
    }

    /// The `id` of the element that has the focus.
    pub fn focused_id(&self) -> String {
        let active = self.session_command("GET", "/element/active", &Value::Null);
        let element = element_id(&active).unwrap_or_default();
        self.session_command(
            "GET",
            &format!("/element/{element}/property/id"),
            &Value::Null,
        )
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Saves a screenshot as `dir/name.png`.
    pub fn screenshot(&self, dir: &Path, name: &str) -> PathBuf {
        let encoded = self.session_command("GET", "/screenshot", &Value::Null);
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap_or_default())
            .expect("a base64 screenshot");
        std::fs::create_dir_all(dir).expect("screenshot directory");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write the screenshot");
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            let host = format!("127.0.0.1:{}", self.port);
            let _ = super::try_send(self.port, "DELETE", path.as_bytes(), &[("Host", &host)]);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

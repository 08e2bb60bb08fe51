//! A real headless Chromium driven over the Chrome DevTools Protocol, for
//! tests that look at a page as a person's browser shows it.
//!
//! The protocol runs over a pipe (`--remote-debugging-pipe`: the browser
//! reads commands on its fd 3 and writes answers on its fd 4, each a JSON
//! object ended by a NUL byte), so no port is opened and no WebSocket
//! client is needed: a shell maps our stdin/stdout pipes to those two
//! descriptors. Name resolution is turned off for every host but loopback,
//! and the browser's background services with it, so a test never sends
//! traffic off the machine.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// The `chromium` binary on PATH; an error says how to get one.
pub(crate) fn chromium() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").context("no PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|candidate| candidate.is_file())
        .context(
            "no `chromium` on PATH: this test needs a real browser \
             (Debian: apt-get install chromium; .ci/run installs it)",
        )
}

/// The flags every headless Chromium of the tests runs with: no sandbox
/// (tests may run as root), no GPU, no first-run or background traffic,
/// no name resolution off loopback.
pub(crate) const HEADLESS: [&str; 11] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-pings",
    // No name resolves but loopback's: nothing can leave the machine.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
];

/// Records, in every document the page loads, the Content-Security-Policy
/// violations and uncaught errors, for [`Page::problems`].
const WATCH_PROBLEMS: &str = "window.__problems = [];
document.addEventListener('securitypolicyviolation', (e) =>
  window.__problems.push('CSP ' + e.violatedDirective + ' blocked ' + e.blockedURI));
window.addEventListener('error', (e) => window.__problems.push('error ' + e.message));
window.addEventListener('unhandledrejection', (e) =>
  window.__problems.push('rejection ' + String(e.reason)));";

/// How long Chromium may take to answer a command or send an awaited event.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// A headless Chromium; [`Browser::close`] ends it, and dropping it kills
/// it and every process it started.
pub(crate) struct Browser {
    child: Child,
    commands: ChildStdin,
    answers: BufReader<ChildStdout>,
    next_id: u64,
    /// Every event received so far, in order.
    pub(crate) events: Vec<Value>,
}

/// One tab, attached.
pub(crate) struct Page {
    session: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The group's leader is the browser (the shell exec'd it); a test
        // that failed midway leaves no renderer behind.
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Browser {
    /// Starts Chromium with its profile in `scratch`.
    pub(crate) async fn launch(scratch: &Path) -> Result<Self> {
        let chromium = chromium()?;
        let profile = scratch.join("profile");
        std::fs::create_dir_all(&profile)?;
        let log = std::fs::File::create(scratch.join("chromium.log"))?;
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            // fd 3 reads our commands, fd 4 carries the answers; the
            // browser's own stdout joins its log.
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>&2"#)
            .arg(&chromium)
            .args(HEADLESS)
            .args([
                "--disable-domain-reliability",
                "--disable-extensions",
                "--remote-debugging-pipe",
                "--window-size=1200,900",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            // A group of its own, so that its renderers go with it.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", chromium.display()))?;
        let commands = child.stdin.take().context("stdin")?;
        let answers = BufReader::new(child.stdout.take().context("stdout")?);
        Ok(Self {
            child,
            commands,
            answers,
            next_id: 1,
            events: Vec::new(),
        })
    }

    /// Sends `method` (to `session`'s tab, or to the browser) and returns
    /// its result, keeping the events that arrive meanwhile.
    pub(crate) async fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message)?;
        bytes.push(0);
        self.commands.write_all(&bytes).await?;
        self.commands.flush().await?;
        loop {
            let message = self.next_message().await?;
            if message["id"] == json!(id) {
                if let Some(error) = message.get("error") {
                    bail!("{method}: {error}");
                }
                return Ok(message["result"].clone());
            }
            if message.get("method").is_some() {
                self.events.push(message);
            }
        }
    }

    async fn next_message(&mut self) -> Result<Value> {
        let mut buffer = Vec::new();
        let read = tokio::time::timeout(ANSWER_WITHIN, self.answers.read_until(0, &mut buffer))
            .await
            .context("chromium answered nothing in time")??;
        if read == 0 || buffer.last() != Some(&0) {
            let status = self.child.try_wait()?;
            bail!("chromium closed its pipe (exit: {status:?}); see chromium.log");
        }
        buffer.pop();
        Ok(serde_json::from_slice(&buffer)?)
    }

    /// Waits for an event named `method` of `page` (or takes it, if it came
    /// while waiting for an answer), keeping the others.
    pub(crate) async fn event(&mut self, page: &Page, method: &str) -> Result<Value> {
        let ours = |message: &Value| {
            message["sessionId"] == json!(page.session) && message["method"] == json!(method)
        };
        if let Some(at) = self.events.iter().position(ours) {
            return Ok(self.events.remove(at));
        }
        loop {
            let message = self.next_message().await?;
            if ours(&message) {
                return Ok(message);
            }
            if message.get("method").is_some() {
                self.events.push(message);
            }
        }
    }

    /// A new tab with `url` loaded, its problems watched and its requests
    /// recorded (see [`Self::requests`]).
    pub(crate) async fn open(&mut self, url: &str) -> Result<Page> {
        let target = self
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await?;
        let target = target["targetId"].as_str().context("targetId")?.to_string();
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target, "flatten": true}),
            )
            .await?;
        let page = Page {
            session: attached["sessionId"]
                .as_str()
                .context("sessionId")?
                .to_string(),
        };
        let session = Some(page.session.as_str());
        self.call(session, "Page.enable", json!({})).await?;
        self.call(session, "Network.enable", json!({})).await?;
        self.call(
            session,
            "Page.addScriptToEvaluateOnNewDocument",
            json!({"source": WATCH_PROBLEMS}),
        )
        .await?;
        self.call(session, "Page.navigate", json!({"url": url}))
            .await?;
        self.event(&page, "Page.loadEventFired").await?;
        Ok(page)
    }

    /// What `expression` evaluates to in `page` (awaited when a promise).
    pub(crate) async fn evaluate(&mut self, page: &Page, expression: &str) -> Result<Value> {
        let result = self
            .call(
                Some(&page.session),
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        if let Some(exception) = result.get("exceptionDetails") {
            bail!("{expression}: {exception}");
        }
        Ok(result["result"]["value"].clone())
    }

    /// Evaluates `expression` in `page` until it is true, or fails after
    /// `within` naming `what`. The page changes on its own timers: there is
    /// no event to await, so this looks every 100 ms.
    pub(crate) async fn wait_for(
        &mut self,
        page: &Page,
        expression: &str,
        within: Duration,
        what: &str,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.evaluate(page, expression).await? == json!(true) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let text = self.evaluate(page, "document.body.innerText").await?;
                bail!("{what}: not within {within:?}; the page says:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Shows `page` at `width` × `height` CSS pixels, as a phone (`mobile`)
    /// or a desktop would.
    pub(crate) async fn resize(
        &mut self,
        page: &Page,
        width: u32,
        height: u32,
        mobile: bool,
    ) -> Result<()> {
        self.call(
            Some(&page.session),
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        )
        .await?;
        Ok(())
    }

    /// A PNG of the whole of `page`, its full height.
    pub(crate) async fn screenshot(&mut self, page: &Page) -> Result<Vec<u8>> {
        use base64::Engine as _;
        let shot = self
            .call(
                Some(&page.session),
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await?;
        let data = shot["data"].as_str().context("screenshot data")?;
        Ok(base64::engine::general_purpose::STANDARD.decode(data)?)
    }

    /// The CSP violations and uncaught errors `page` met so far.
    pub(crate) async fn problems(&mut self, page: &Page) -> Result<Vec<String>> {
        let problems = self.evaluate(page, "window.__problems").await?;
        Ok(serde_json::from_value(problems)?)
    }

    /// Closes the browser and waits for it to exit.
    pub(crate) async fn close(mut self) -> Result<()> {
        // Its answer may not come: it closes the pipe as it goes.
        let _ = self.call(None, "Browser.close", json!({})).await;
        tokio::time::timeout(ANSWER_WITHIN, self.child.wait())
            .await
            .context("chromium did not exit")??;
        Ok(())
    }

    /// The URL of every request any tab made so far.
    pub(crate) fn requests(&self) -> Vec<String> {
        self.events
            .iter()
            .filter(|event| event["method"] == json!("Network.requestWillBeSent"))
            .filter_map(|event| event["params"]["request"]["url"].as_str())
            .map(str::to_string)
            .collect()
    }
}

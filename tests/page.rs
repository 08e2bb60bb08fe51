//! The daemon's page (`GET /` on `--http`) in a real headless Chromium:
//! two daemons live on loopback, the page of one looked at as a person
//! would. It shows the other peer live, moves its counters when an asset
//! arrives, lists a refused dialer and a grant (never its secret), stays
//! within a phone's width, breaks no rule of its own Content-Security-Policy
//! and asks nothing of any host but its node. Screenshots land in the test's
//! scratch folder, `target/tmp/page/`; with `CAN_SYNC_PAGE_PNG=PATH` the
//! desktop one is copied to PATH too (how `docs/page.png` is refreshed).

mod common;

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::browser::{Browser, Page};
use common::process::{start_daemon, BIN};
use common::TIMEOUT;
use tokio::process::Child;

/// How soon the page must show what happened on the node: it polls every
/// two seconds.
const SHOWN_WITHIN: Duration = Duration::from_secs(10);

/// A daemon on an embedded store in `data_dir`, its `--http` on a free
/// loopback port; returns it, its ticket and its HTTP address.
async fn daemon(data_dir: &Path, extra: &[&str]) -> Result<(Child, String, String)> {
    let mut args = vec![
        "--data-dir",
        data_dir.to_str().context("utf-8 path")?,
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--no-relay",
    ];
    args.extend(extra);
    let (child, ticket) = start_daemon(&args).await?;
    // Written before the ticket is printed.
    let http = std::fs::read_to_string(data_dir.join("http"))?;
    Ok((child, ticket, http))
}

/// Runs the binary with `args` to its end (within [`TIMEOUT`]).
async fn run(args: &[&str]) -> Result<std::process::Output> {
    let output = tokio::process::Command::new(BIN)
        .args(args)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(TIMEOUT, output)
        .await
        .with_context(|| format!("can-sync {args:?} did not end"))?
        .map_err(Into::into)
}

/// The text of the element `selector` finds, as a JS expression.
fn text_of(selector: &str) -> String {
    format!("(document.querySelector({selector:?}) || {{}}).textContent")
}

async fn text(browser: &mut Browser, page: &Page, selector: &str) -> Result<String> {
    let value = browser.evaluate(page, &text_of(selector)).await?;
    Ok(value.as_str().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_node_live_in_a_real_browser() -> Result<()> {
    tokio::time::timeout(TIMEOUT * 2, async {
        let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join("page");
        // Last run's screenshots go; a folder that is not there is fine.
        match std::fs::remove_dir_all(&scratch) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err.into()),
            _ => {}
        }
        std::fs::create_dir_all(&scratch)?;
        let dirs: Vec<_> = (0..3)
            .map(|_| tempfile::tempdir())
            .collect::<Result<_, _>>()?;
        let dir = |i: usize| dirs[i].path().to_str().context("utf-8 path").map(String::from);

        // B is open to writers; A dials B and admits nobody by id. A grant
        // made while it runs is seen at once, so a dialer without the
        // grant's capability is refused.
        let (_b, ticket_b, http_b) = daemon(dirs[1].path(), &["--open", "write"]).await?;
        let (_a, ticket_a, http_a) = daemon(dirs[0].path(), &["--peer", &ticket_b]).await?;
        let granted = run(&["ticket", "--data-dir", &dir(0)?, "--grant", "read"]).await?;
        ensure!(granted.status.success(), "ticket --grant: {granted:?}");
        let granted = String::from_utf8(granted.stdout)?;
        let capability = granted
            .trim()
            .rsplit_once('#')
            .context("a granted ticket ends with #CAPABILITY")?
            .1
            .to_string();
        let id_b = ticket_b.split('@').next().context("ticket id")?.to_string();

        let mut browser = Browser::launch(&scratch).await?;
        let base = format!("http://{http_a}");
        let page = browser.open(&format!("{base}/")).await?;

        // The other peer's row says live.
        let peer = format!("[data-peer=\"{id_b}\"]");
        browser
            .wait_for(
                &page,
                &format!("{} === 'live'", text_of(&format!("{peer} .state"))),
                SHOWN_WITHIN,
                "B's row says live",
            )
            .await?;
        browser
            .wait_for(
                &page,
                &format!("{} === '0'", text_of("#store-assets")),
                SHOWN_WITHIN,
                "the store's count shows",
            )
            .await?;

        // An asset added on B moves A's counters within seconds.
        let client = can_sync::can::client::http_client_builder()?.build()?;
        client
            .post(format!("http://{http_b}/assets"))
            .header("content-type", "application/octet-stream")
            .body(vec![7u8; 64 * 1024])
            .send()
            .await?
            .error_for_status()?;
        browser
            .wait_for(
                &page,
                &format!(
                    "{} === '1' && {} === '1' && {}.startsWith('1 ·') && {} !== '0 B/s'",
                    text_of("#store-assets"),
                    text_of("#assets-received"),
                    text_of(&format!("{peer} [data-key=received]")),
                    text_of(&format!("{peer} [data-key=rate-received]")),
                ),
                SHOWN_WITHIN,
                "the asset B got shows as received on A",
            )
            .await?;

        // A dialer with a wrong capability is refused, and the page says so.
        let wrong = format!("{ticket_a}#{}", "ab".repeat(32));
        let stranger = run(&["seed", "--store", &dir(2)?, "--no-relay", "--from", &wrong]).await?;
        ensure!(!stranger.status.success(), "the stranger's seed is refused");
        browser
            .wait_for(
                &page,
                &format!(
                    "{} === '1' && document.querySelector('#refusals tr[data-kind=capability]') !== null",
                    text_of("#refused-capabilities"),
                ),
                SHOWN_WITHIN,
                "the refused dialer shows",
            )
            .await?;

        // The grant is listed; its capability never reaches the page.
        let grant_rows = browser
            .evaluate(&page, "document.querySelectorAll('#grants tbody tr').length")
            .await?;
        assert_eq!(grant_rows, 1);
        let html = browser
            .evaluate(&page, "document.documentElement.outerHTML")
            .await?;
        let html = html.as_str().unwrap_or_default();
        assert!(!html.contains(&capability), "the capability is on the page");
        assert!(
            text(&mut browser, &page, "#node-id").await?.len() < 20,
            "the id shows short"
        );

        let desktop = browser.screenshot(&page).await?;
        std::fs::write(scratch.join("page.png"), &desktop)?;
        if let Some(path) = std::env::var_os("CAN_SYNC_PAGE_PNG") {
            std::fs::write(path, &desktop)?;
        }

        // At a phone's width nothing overflows sideways (once the page has
        // laid itself out again: the chart redraws on the resize event).
        browser.resize(&page, 390, 844, true).await?;
        browser
            .wait_for(
                &page,
                "document.documentElement.scrollWidth <= document.documentElement.clientWidth",
                SHOWN_WITHIN,
                "the page fits a phone's width",
            )
            .await?;
        std::fs::write(scratch.join("page-phone.png"), browser.screenshot(&page).await?)?;

        // Its own policy held, and it asked nothing of any other host.
        let problems = browser.problems(&page).await?;
        assert!(problems.is_empty(), "{problems:?}");
        let requests = browser.requests();
        assert!(
            requests.iter().any(|url| url.ends_with("/ui/page.js")),
            "{requests:?}"
        );
        for url in &requests {
            assert!(url.starts_with(&base), "a request off the node: {url}");
        }
        browser.close().await
    })
    .await
    .context("timed out")?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_carries_its_policy_and_weighs_under_150_kb() -> Result<()> {
    tokio::time::timeout(TIMEOUT, async {
        let dir = tempfile::tempdir()?;
        let (_a, _ticket, http) = daemon(dir.path(), &[]).await?;
        let client = can_sync::can::client::http_client_builder()?.build()?;
        let mut weight = 0;
        for (path, kind) in [
            ("/", "text/html"),
            ("/ui/page.css", "text/css"),
            ("/ui/page.js", "text/javascript"),
        ] {
            let response = client
                .get(format!("http://{http}{path}"))
                .send()
                .await?
                .error_for_status()?;
            let headers = response.headers();
            let csp = headers["content-security-policy"].to_str()?;
            assert!(csp.contains("default-src 'none'"), "{path}: {csp}");
            assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
            assert!(!csp.contains("unsafe"), "{path}: {csp}");
            assert_eq!(headers["x-content-type-options"], "nosniff");
            assert!(
                headers["content-type"].to_str()?.starts_with(kind),
                "{path}: {:?}",
                headers["content-type"]
            );
            weight += response.bytes().await?.len();
        }
        assert!(weight < 150_000, "the page weighs {weight} bytes");

        // The browser rules of the API hold for the page too: a Host that is
        // not ours (DNS rebinding) is refused.
        let rebound = client
            .get(format!("http://{http}/"))
            .header("host", "evil.example")
            .send()
            .await?;
        assert_eq!(rebound.status(), reqwest::StatusCode::MISDIRECTED_REQUEST);
        // And the page is read-only: no route under it takes a write.
        let post = client
            .post(format!("http://{http}/"))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await?;
        assert_eq!(post.status(), reqwest::StatusCode::METHOD_NOT_ALLOWED);
        Ok(())
    })
    .await
    .context("timed out")?
}

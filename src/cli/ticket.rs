//! `can-sync ticket` and `can-sync id`: what a node's peers dial and what
//! their `--allow` takes, read from its `--data-dir`. The ticket is the one
//! the daemon wrote there when it started ([`TICKET_FILE`]); the id comes
//! from the node's key, created on first use.
//!
//! `ticket --grant read|write [--expires DURATION]` prints a ticket that
//! admits its holder whatever its endpoint id (a granted capability, see
//! `can_sync::node::access::grants`); `--revoke ID|all` withdraws grants and
//! `--list-grants` shows them. A running daemon sees both at once.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use can_sync::clock::now_ms;
use can_sync::node::access::{GrantBook, Revoke, Right};
use can_sync::node::{keys, Ticket};
use clap::Args;

/// Where a running daemon writes its ticket for `can-sync ticket`.
pub(crate) const TICKET_FILE: &str = "ticket";

#[derive(Args)]
pub(crate) struct DataDirArgs {
    /// The node's data folder.
    #[arg(long)]
    data_dir: PathBuf,
}

#[derive(Args)]
pub(crate) struct TicketArgs {
    #[command(flatten)]
    node: DataDirArgs,
    /// Print a ticket that admits its holder, whatever its endpoint id, with
    /// this right (read or write): for seeding a new node whose id you don't
    /// know yet. Hand it over like a password.
    #[arg(long, value_name = "RIGHT", conflicts_with_all = ["revoke", "list_grants"])]
    grant: Option<Right>,
    /// With --grant: the ticket stops admitting after this long (for
    /// example 90s, 30m, 12h, 7d); without: never.
    #[arg(long, value_name = "DURATION", requires = "grant", value_parser = parse_duration)]
    expires: Option<Duration>,
    /// Withdraw the grant with this id (as --grant and --list-grants print
    /// it), or every grant with `all`.
    #[arg(long, value_name = "ID|all", conflicts_with = "list_grants")]
    revoke: Option<String>,
    /// List the grants: id, right, expiry.
    #[arg(long)]
    list_grants: bool,
}

/// Prints the ticket the daemon in `--data-dir` wrote when it started, or
/// makes, revokes or lists grants.
pub(crate) fn ticket(args: TicketArgs) -> Result<()> {
    let data_dir = &args.node.data_dir;
    let book = GrantBook::at(data_dir);
    if let Some(which) = &args.revoke {
        let which = match which.as_str() {
            "all" => Revoke::All,
            id => Revoke::One(id.to_string()),
        };
        let revoked = book.revoke(&which)?;
        eprintln!("revoked {revoked} grant(s)");
        return Ok(());
    }
    if args.list_grants {
        let now = now_ms();
        for grant in book.list()? {
            let expiry = match grant.expires_at_ms {
                None => "never expires".to_string(),
                Some(at) if at <= now => "expired".to_string(),
                Some(at) => format!("expires in {} s", (at - now) / 1000),
            };
            println!("{} {} {}", grant.id, grant.right, expiry);
        }
        return Ok(());
    }
    let mut ticket: Ticket = read_ticket(data_dir)?
        .parse()
        .context("the ticket file is corrupt")?;
    if let Some(right) = args.grant {
        let (capability, grant) = book.grant(right, args.expires, now_ms())?;
        ticket.capability = Some(capability);
        eprintln!(
            "granted {right} as {} (revoke with `can-sync ticket --data-dir {} --revoke {}`)",
            grant.id,
            data_dir.display(),
            grant.id
        );
    }
    println!("{ticket}");
    Ok(())
}

/// The ticket the daemon in `data_dir` wrote when it started.
fn read_ticket(data_dir: &std::path::Path) -> Result<String> {
    let path = data_dir.join(TICKET_FILE);
    let ticket = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no ticket in {}: start `can-sync daemon --data-dir` there first",
            path.display()
        )
    })?;
    Ok(ticket.trim().to_string())
}

/// `90s`, `30m`, `12h`, `7d`: a number and a unit.
pub(crate) fn parse_duration(text: &str) -> Result<Duration> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .with_context(|| format!("{text:?}: expected a number and a unit, as 30m or 7d"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => bail!("{text:?}: unknown unit {other:?}: s, m, h or d"),
    };
    Ok(Duration::from_secs(number.saturating_mul(seconds)))
}

/// Prints the endpoint id of the node whose key is in `--data-dir`.
pub(crate) fn id(args: DataDirArgs) -> Result<()> {
    println!("{}", keys::load_or_create(&args.data_dir)?.public());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_number_and_a_unit() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("12h").unwrap(), Duration::from_secs(43_200));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        assert!(parse_duration("7").is_err());
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("3w").is_err());
    }
}

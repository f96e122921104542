//! `orders`, `order ID` and `extend`: the agent's ledger of orders, and
//! the expiry of an isolation.

use std::time::Duration;

use clap::Args;
use prost_types::Timestamp;
use serde_json::{json, Value};
use stockade_proto::v1::{
    stockade_client::StockadeClient, ExtendIsolationRequest, GetOrderRequest, ListOrdersRequest,
    Order, OrderState,
};
use tonic::transport::Channel;

use super::{args::PodArg, json, table::Table, Error, Output, Report};

type Client = StockadeClient<Channel>;

#[derive(Debug, Args)]
pub struct ListArgs {
    /// At most this many orders, newest first; 0 shows all.
    #[arg(long, env = "STOCKADE_LIMIT", default_value_t = 50)]
    pub limit: u32,

    /// Only orders in this state: accepted, enforced, failed, released or
    /// expired.
    #[arg(
        long,
        env = "STOCKADE_STATE",
        default_value = "",
        hide_default_value = true
    )]
    pub state: String,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// The order's id.
    pub id: String,
}

#[derive(Debug, Args)]
pub struct ExtendArgs {
    #[command(flatten)]
    pub pod: PodArg,

    /// How long from now until the agent releases the isolation, as 90s,
    /// 10m or 1h; 0 removes the expiry.
    #[arg(long, env = "STOCKADE_TTL", value_parser = parse_ttl)]
    pub ttl: Duration,

    #[command(flatten)]
    pub meta: super::contain::MetaArgs,
}

/// `90s`, `10m`, `1h`, `2d`, or a bare number of seconds; `0` is allowed.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(end);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("expected a duration such as 90s, 10m or 1h, got `{text}`"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit `{unit}`: use s, m, h or d")),
    };
    let seconds = number.saturating_mul(scale);
    if seconds > u64::from(u32::MAX) {
        return Err(format!("at most {} seconds", u32::MAX));
    }
    Ok(Duration::from_secs(seconds))
}

/// Whole seconds of a TTL parsed by [`parse_ttl`], which bounds it.
pub fn ttl_seconds(ttl: Duration) -> u32 {
    u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX)
}

pub async fn list(client: &mut Client, args: &ListArgs, output: Output) -> Result<Report, Error> {
    let request = ListOrdersRequest {
        limit: args.limit,
        state: args.state.clone(),
    };
    let orders = client.list_orders(request).await?.into_inner().orders;

    let text = match output {
        Output::Table => table(&orders),
        Output::Json => {
            let orders: Vec<Value> = orders.iter().map(order_json).collect();
            json::text(&json!({ "orders": orders }))
        }
    };
    Ok(Report::plain(text))
}

pub async fn get(client: &mut Client, args: &GetArgs, output: Output) -> Result<Report, Error> {
    let request = GetOrderRequest {
        id: args.id.clone(),
    };
    let order = client.get_order(request).await?.into_inner();

    let text = match output {
        Output::Table => details(&order),
        Output::Json => json::text(&order_json(&order)),
    };
    Ok(Report::plain(text))
}

pub async fn extend(
    client: &mut Client,
    args: &ExtendArgs,
    output: Output,
) -> Result<Report, Error> {
    let request = ExtendIsolationRequest {
        pod: Some(args.pod.selector()),
        ttl_seconds: ttl_seconds(args.ttl),
        order_id: args.meta.order_id.clone(),
        dry_run: args.meta.dry_run,
    };
    let reply = client.extend_isolation(request).await?.into_inner();
    let isolation = reply.isolation.unwrap_or_default();

    let text = match output {
        Output::Table if reply.dry_run => format!(
            "DRY RUN: nothing was changed; the isolation of uid {} would expire: {}\n",
            isolation
                .pod
                .as_ref()
                .map(|p| p.uid.as_str())
                .unwrap_or("-"),
            when(isolation.expires_at.as_ref())
        ),
        Output::Table => format!(
            "isolation of order {} now expires: {}\n",
            isolation.order_id,
            when(isolation.expires_at.as_ref())
        ),
        Output::Json => json::text(&json!({
            "isolation": json::isolation(&isolation),
            "dry_run": reply.dry_run,
        })),
    };
    Ok(Report::plain(text))
}

fn table(orders: &[Order]) -> String {
    let header = [
        "ID",
        "ACTION",
        "STATE",
        "POD-UID",
        "RECEIVED-AT",
        "EXPIRES-AT",
        "ERROR",
    ];
    let mut table = Table::new(&header);
    for order in orders {
        table.row(vec![
            order.id.clone(),
            order.action.clone(),
            state_name(order.state).to_string(),
            dash(&order.pod_uid),
            when(order.received_at.as_ref()),
            when(order.expires_at.as_ref()),
            dash(&order.error_message),
        ]);
    }
    table.render()
}

fn details(order: &Order) -> String {
    let error = match order.error_code {
        0 => "-".to_string(),
        code => format!(
            "{}: {}",
            super::code_name(tonic::Code::from(code)),
            order.error_message
        ),
    };
    Table::pairs([
        ("id", order.id.clone()),
        ("action", order.action.clone()),
        ("state", state_name(order.state).to_string()),
        ("pod-uid", dash(&order.pod_uid)),
        ("cgroup-id", order.cgroup_id.to_string()),
        ("received-at", when(order.received_at.as_ref())),
        ("updated-at", when(order.updated_at.as_ref())),
        ("expires-at", when(order.expires_at.as_ref())),
        ("error", error),
    ])
    .render()
}

fn order_json(order: &Order) -> Value {
    json!({
        "id": order.id,
        "action": order.action,
        "state": state_name(order.state),
        "pod_uid": order.pod_uid,
        "cgroup_id": order.cgroup_id,
        "received_at": stamp(order.received_at.as_ref()),
        "updated_at": stamp(order.updated_at.as_ref()),
        "expires_at": stamp(order.expires_at.as_ref()),
        "error_code": order.error_code,
        "error_message": order.error_message,
    })
}

fn state_name(state: i32) -> &'static str {
    match OrderState::try_from(state) {
        Ok(OrderState::Accepted) => "accepted",
        Ok(OrderState::Enforced) => "enforced",
        Ok(OrderState::Failed) => "failed",
        Ok(OrderState::Released) => "released",
        Ok(OrderState::Expired) => "expired",
        _ => "unknown",
    }
}

fn when(at: Option<&Timestamp>) -> String {
    at.map_or_else(|| "never".to_string(), Timestamp::to_string)
}

fn stamp(at: Option<&Timestamp>) -> Value {
    at.map_or(Value::Null, |at| Value::String(at.to_string()))
}

fn dash(text: &str) -> String {
    match text.is_empty() {
        true => "-".to_string(),
        false => text.to_string(),
    }
}

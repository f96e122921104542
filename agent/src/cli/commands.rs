//! One function per command: the requests it sends and what it prints.

use serde_json::json;
use stockade_proto::v1::{
    stockade_client::StockadeClient, GetInfoRequest, IsolateRequest, Isolation, IsolationMode,
    ListIsolationsRequest, ListPodsRequest, Pod, ReleaseRequest,
};
use tonic::transport::Channel;

use super::{
    args::{Command, IsolateArgs, Output, ReleaseArgs},
    contain, json, orders, render, Error, Report,
};

type Client = StockadeClient<Channel>;
type Result<T, E = Error> = std::result::Result<T, E>;

pub async fn execute(command: &Command, client: &mut Client, output: Output) -> Result<Report> {
    match command {
        Command::Status => status(client, output).await,
        Command::Doctor => doctor(client, output).await,
        Command::Pods => pods(client, output).await,
        Command::Isolate(args) => isolate(client, args, output).await,
        Command::Release(args) => release(client, args, output).await,
        Command::Isolations => isolations(client, output).await,
        Command::Freeze(args) => contain::freeze(client, args, output).await,
        Command::Thaw(args) => contain::thaw(client, args, output).await,
        Command::Kill(args) => contain::kill(client, args, output).await,
        Command::Terminate(args) => contain::terminate(client, args, output).await,
        Command::Contain(args) => contain::contain(client, args, output).await,
        Command::Uncontain(args) => contain::uncontain(client, args, output).await,
        Command::Orders(args) => orders::list(client, args, output).await,
        Command::Order(args) => orders::get(client, args, output).await,
        Command::Extend(args) => orders::extend(client, args, output).await,
    }
}

async fn status(client: &mut Client, output: Output) -> Result<Report> {
    let info = client.get_info(GetInfoRequest {}).await?.into_inner();
    let pods = list_pods(client).await?;
    let isolations = list_isolations(client).await?;

    let text = match output {
        Output::Table => render::status(&info, &pods, &isolations),
        Output::Json => json::text(&json!({
            "info": json::info(&info),
            "pods": pods.len(),
            "isolations": isolations.len(),
        })),
    };
    Ok(Report::plain(text))
}

async fn doctor(client: &mut Client, output: Output) -> Result<Report> {
    let info = client.get_info(GetInfoRequest {}).await?.into_inner();

    let (table, problem) = render::doctor(&info.features);
    let text = match output {
        Output::Table => table,
        Output::Json => json::text(&json::info(&info)),
    };
    Ok(Report { text, problem })
}

async fn pods(client: &mut Client, output: Output) -> Result<Report> {
    let pods = list_pods(client).await?;

    let text = match output {
        Output::Table => render::pods(&pods, &list_isolations(client).await?),
        Output::Json => {
            let pods: Vec<_> = pods.iter().map(json::pod).collect();
            json::text(&json!({ "pods": pods }))
        }
    };
    Ok(Report::plain(text))
}

async fn isolate(client: &mut Client, args: &IsolateArgs, output: Output) -> Result<Report> {
    let mode = if args.strict {
        IsolationMode::Strict
    } else {
        IsolationMode::AllowNodeProbes
    };
    let request = IsolateRequest {
        pod: Some(args.pod.selector()),
        allow: args.allow.clone(),
        mode: mode.into(),
        reason: args.reason.clone(),
        reference: args.reference.clone(),
        dry_run: args.meta.dry_run,
        order_id: args.meta.order_id.clone(),
        ttl_seconds: orders::ttl_seconds(args.ttl),
    };
    let reply = client.isolate(request).await?.into_inner();
    let isolation = reply.isolation.unwrap_or_default();

    let text = match output {
        Output::Table => dry_run_note(reply.dry_run) + &render::isolated_report(&isolation),
        Output::Json => json::text(&json!({
            "isolation": json::isolation(&isolation),
            "dry_run": reply.dry_run,
        })),
    };
    Ok(Report::plain(text))
}

async fn release(client: &mut Client, args: &ReleaseArgs, output: Output) -> Result<Report> {
    let request = ReleaseRequest {
        pod: args.pod.selector(),
        reason: args.reason.clone(),
        dry_run: args.meta.dry_run,
        order_id: args.meta.order_id.clone(),
        all: args.pod.all,
    };
    let reply = client.release(request).await?.into_inner();

    let text = match output {
        Output::Table => dry_run_note(reply.dry_run) + &render::released_report(&reply),
        Output::Json => {
            let mut value = json::release(&reply);
            value["dry_run"] = reply.dry_run.into();
            json::text(&value)
        }
    };
    Ok(Report::plain(text))
}

/// Said first, so that a dry run's report is never read as done.
fn dry_run_note(dry_run: bool) -> String {
    match dry_run {
        true => "DRY RUN: nothing was changed; the agent would do this:\n".into(),
        false => String::new(),
    }
}

async fn isolations(client: &mut Client, output: Output) -> Result<Report> {
    let isolations = list_isolations(client).await?;

    let text = match output {
        Output::Table => render::isolations(&isolations),
        Output::Json => {
            let isolations: Vec<_> = isolations.iter().map(json::isolation).collect();
            json::text(&json!({ "isolations": isolations }))
        }
    };
    Ok(Report::plain(text))
}

async fn list_pods(client: &mut Client) -> Result<Vec<Pod>> {
    Ok(client
        .list_pods(ListPodsRequest {})
        .await?
        .into_inner()
        .pods)
}

async fn list_isolations(client: &mut Client) -> Result<Vec<Isolation>> {
    let reply = client.list_isolations(ListIsolationsRequest {}).await?;
    Ok(reply.into_inner().isolations)
}

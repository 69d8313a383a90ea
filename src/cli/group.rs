//! `weir group list|describe`.

use clap::Subcommand;

use super::CliResult;
use crate::client::Client;
use crate::group::coordinator::generation_label;
use crate::proto;

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Lists consumer groups with their state and total lag.
    List,
    /// Shows a group's members, assignment, committed offsets and lag.
    Describe { group: String },
}

fn total_lag(group: &proto::GroupDescription) -> u64 {
    group.partitions.iter().map(|p| p.lag).sum()
}

pub async fn run(command: GroupCommand, broker: &str) -> CliResult {
    let client = Client::connect(broker).await?;
    match command {
        GroupCommand::List => {
            for group in client.list_groups().await? {
                say!(
                    "{}\t{}\tgeneration={}\tmembers={}\tlag={}",
                    group.group,
                    group.state,
                    generation_label(group.generation),
                    group.members.len(),
                    total_lag(&group)
                );
            }
        }
        GroupCommand::Describe { group } => {
            let group = client.describe_group(&group).await?;
            say!(
                "{}  state={} generation={} assignor={} lag={}",
                group.group,
                group.state,
                generation_label(group.generation),
                group.assignor,
                total_lag(&group)
            );
            for member in &group.members {
                let owned: Vec<String> =
                    member.assignment.iter().map(|tp| format!("{}/{}", tp.topic, tp.partition)).collect();
                say!("  member {}  topics={}  owns={}", member.member_id, member.topics.join(","), owned.join(","));
            }
            say!("  {:<24} {:>9} {:>14} {:>9}  owner", "partition", "committed", "high_watermark", "lag");
            for p in &group.partitions {
                let committed = p.committed_offset.map_or("-".to_owned(), |o| o.to_string());
                let name = format!("{}/{}", p.topic, p.partition);
                say!("  {name:<24} {committed:>9} {:>14} {:>9}  {}", p.high_watermark, p.lag, p.owner);
            }
        }
    }
    Ok(())
}

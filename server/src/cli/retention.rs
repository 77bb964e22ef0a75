//! `backup-server retention plan`: what retention would keep and delete, and why, changing
//! nothing; retention after a backup runs exactly this plan.

use super::settings::CommonArgs;

/// `backup-server retention`.
#[derive(Debug, clap::Args)]
pub struct RetentionArgs {
    #[command(subcommand)]
    pub command: RetentionCommand,
}

/// Retention subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum RetentionCommand {
    /// Print what retention would keep (with why) and delete, without changing anything.
    #[command(mut_args(super::shows_only(super::RETENTION_FLAGS)))]
    Plan(RetentionPlanArgs),
}

/// `backup-server retention plan`.
#[derive(Debug, clap::Args)]
pub struct RetentionPlanArgs {
    /// Shared options (the destination and the retention flags are what count).
    #[command(flatten)]
    pub common: CommonArgs,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) async fn run(a: RetentionArgs) -> anyhow::Result<()> {
    let RetentionCommand::Plan(a) = a.command;
    let settings = a.common.resolve()?;
    let dest = settings.destination().await?;
    let plan = crate::engine::retention::plan_for(dest.as_ref(), settings.retention).await?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "policy": settings.retention,
                "keep": plan.keep.iter().map(|id| serde_json::json!({
                    "id": id, "reasons": plan.reasons.get(id).cloned().unwrap_or_default(),
                })).collect::<Vec<_>>(),
                "delete_backups": plan.delete_backups,
                "delete_leftovers": plan.delete_leftovers,
            }))?
        );
        return Ok(());
    }
    let p = &settings.retention;
    println!(
        "policy: keep last {}, daily {}, weekly {}, monthly {}, yearly {}{}",
        p.keep_last,
        p.keep_daily,
        p.keep_weekly,
        p.keep_monthly,
        p.keep_yearly,
        if p.keeps_all() { " (keep all)" } else { "" }
    );
    for id in &plan.keep {
        let why = plan.reasons.get(id).cloned().unwrap_or_default();
        println!("keep    {id}  {}", why.join("; "));
    }
    for id in &plan.delete_backups {
        println!("delete  {id}");
    }
    for key in &plan.delete_leftovers {
        println!("delete  {key}  (an incomplete leftover older than a day)");
    }
    if plan.is_empty() {
        println!("nothing to delete");
    }
    Ok(())
}

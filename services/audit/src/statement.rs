//! A partner's statement for a period — opening balance, every accrual, reversal, clawback and
//! payout with its explanation, closing balance — rendered as text, CSV or one self-contained
//! HTML page (inline style, no scripts, no external resources). The figures come from
//! `pl_commissions::reports::statement` over the replayed ledger, the same function the live
//! `GetStatement` uses.

use chrono::{DateTime, SecondsFormat, Utc};
use pl_commissions::reports::Statement;
use pl_eventlog::EventStore;
use pl_ledger::PartnerBalance;
use pl_money::Currency;
use uuid::Uuid;

use crate::export::csv_field;
use crate::replay::replay;
use crate::AuditError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Csv,
    Html,
}

/// Replays the partner's book and builds its statement for `[from, to)` in `currency`.
pub async fn build(
    store: &dyn EventStore,
    partner_id: Uuid,
    currency: Currency,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Statement, AuditError> {
    let replayed = replay(store, Some(partner_id), None).await?;
    Ok(pl_commissions::reports::statement(
        &replayed.ledger,
        partner_id,
        currency,
        from,
        to,
    )?)
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn balance_line(label: &str, b: &PartnerBalance) -> String {
    format!(
        "{label:<8} pending {:>14}  payable {:>14}  paid {:>14}",
        b.pending.amount(),
        b.payable.amount(),
        b.paid.amount()
    )
}

pub fn render(s: &Statement, format: Format) -> String {
    match format {
        Format::Text => text(s),
        Format::Csv => csv(s),
        Format::Html => html(s),
    }
}

fn text(s: &Statement) -> String {
    let c = s.currency.code();
    let mut out = format!(
        "Statement of partner {} in {c}\nPeriod {} to {} (end exclusive)\n\n{}\n\n",
        s.partner_id,
        time(s.from),
        time(s.to),
        balance_line("opening", &s.opening)
    );
    for e in &s.entries {
        out.push_str(&format!(
            "{}  {:<18} {:>14} {c}  {:<40}  {}\n",
            time(e.occurred_at),
            e.kind.as_str(),
            e.amount.amount(),
            e.account.to_string(),
            e.explanation.line
        ));
    }
    out.push_str(&format!("\n{}\n", balance_line("closing", &s.closing)));
    out
}

const CSV_COLUMNS: &[&str] = &[
    "row",
    "occurred_at",
    "kind",
    "account",
    "counter_account",
    "amount",
    "currency",
    "transaction_id",
    "position",
    "explanation",
];

fn csv(s: &Statement) -> String {
    let c = s.currency.code();
    let mut out = CSV_COLUMNS.join(",");
    out.push('\n');
    let balance_rows = |label: &str, b: &PartnerBalance, at: DateTime<Utc>| {
        [
            ("pending", b.pending),
            ("payable", b.payable),
            ("paid", b.paid),
        ]
        .iter()
        .map(|(name, m)| {
            format!(
                "{label},{},balance,{name},,{},{c},,,\n",
                time(at),
                m.amount()
            )
        })
        .collect::<String>()
    };
    out.push_str(&balance_rows("opening", &s.opening, s.from));
    for e in &s.entries {
        let cells = [
            "entry".to_owned(),
            time(e.occurred_at),
            e.kind.as_str().to_owned(),
            e.account.to_string(),
            e.counter_account.to_string(),
            e.amount.amount().to_string(),
            c.to_owned(),
            e.transaction_id.to_string(),
            e.position.to_string(),
            e.explanation.line.clone(),
        ];
        let line: Vec<String> = cells.iter().map(|x| csv_field(x)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out.push_str(&balance_rows("closing", &s.closing, s.to));
    out
}

/// HTML-escapes text (the five characters with meaning in HTML).
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn html(s: &Statement) -> String {
    let c = esc(s.currency.code());
    let balance_row = |label: &str, b: &PartnerBalance| {
        format!(
            "<tr class=\"balance\"><th>{label}</th><td></td><td></td><td class=\"n\">pending {}</td><td class=\"n\">payable {}</td><td class=\"n\">paid {}</td></tr>\n",
            b.pending.amount(),
            b.payable.amount(),
            b.paid.amount()
        )
    };
    let mut rows = balance_row("Opening", &s.opening);
    for e in &s.entries {
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{} {c}</td><td colspan=\"2\">{}</td></tr>\n",
            esc(&time(e.occurred_at)),
            esc(e.kind.as_str()),
            esc(&e.account.to_string()),
            e.amount.amount(),
            esc(&e.explanation.line)
        ));
    }
    rows.push_str(&balance_row("Closing", &s.closing));
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Statement {partner}</title>\n<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}.n{{text-align:right;font-variant-numeric:tabular-nums}}.balance{{background:#f4f4f4}}</style></head>\n<body><h1>Statement of partner {partner}</h1>\n<p>Currency {c}; period {from} to {to} (end exclusive).</p>\n<table><thead><tr><th>Occurred</th><th>Kind</th><th>Account</th><th>Amount</th><th colspan=\"2\">Explanation</th></tr></thead><tbody>\n{rows}</tbody></table>\n</body></html>\n",
        partner = esc(&s.partner_id.to_string()),
        from = esc(&time(s.from)),
        to = esc(&time(s.to)),
    )
}

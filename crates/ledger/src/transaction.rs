//! Transfers, balanced transactions and the explanation each one carries.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use pl_money::{Currency, Decimal, Money};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Account, LedgerError};

/// Most transfers in one transaction.
pub const MAX_TRANSACTION_TRANSFERS: usize = 64;
/// Largest single transfer, in minor units (10^15: ten trillion dollars in cents).
pub const MAX_TRANSFER_AMOUNT_MINOR_UNITS: i64 = 1_000_000_000_000_000;
/// Longest human-readable explanation line.
pub const MAX_EXPLANATION_LINE_CHARS: usize = 500;
/// Longest identifier or label in an explanation (rule id, tier, custom input key).
pub const MAX_EXPLANATION_LABEL_CHARS: usize = 64;
/// Longest custom input value.
pub const MAX_EXPLANATION_VALUE_CHARS: usize = 256;
/// Most custom formula inputs.
pub const MAX_EXPLANATION_INPUTS: usize = 32;

/// What a transaction records. Each kind allows only the postings listed in the crate docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TransactionKind {
    /// Commission earned, into hold.
    Accrual,
    /// Hold over: pending becomes payable.
    Maturity,
    /// A pending commission undone (refund, chargeback, fraud) before it matured.
    Reversal,
    /// A payable commission taken back; may drive the payable negative.
    Clawback,
    /// A payout sent.
    PayoutCreated,
    /// A payout confirmed by the payment rail.
    PayoutSettled,
    /// A payout returned by the payment rail.
    PayoutFailed,
    /// Market-development funds reimbursed on an approved claim.
    MdfReimbursement,
    /// A flat campaign fee, due on delivery.
    CampaignFee,
    /// A payable moved from one currency to another.
    Conversion,
    /// A manual correction of a payable.
    Adjustment,
}

impl TransactionKind {
    /// Lowercase words, for messages.
    pub const fn as_str(self) -> &'static str {
        match self {
            TransactionKind::Accrual => "accrual",
            TransactionKind::Maturity => "maturity",
            TransactionKind::Reversal => "reversal",
            TransactionKind::Clawback => "clawback",
            TransactionKind::PayoutCreated => "payout created",
            TransactionKind::PayoutSettled => "payout settled",
            TransactionKind::PayoutFailed => "payout failed",
            TransactionKind::MdfReimbursement => "mdf reimbursement",
            TransactionKind::CampaignFee => "campaign fee",
            TransactionKind::Conversion => "conversion",
            TransactionKind::Adjustment => "adjustment",
        }
    }

    /// Whether a transaction of this kind may debit `debit` and credit `credit`.
    fn allows(self, debit: &Account, credit: &Account) -> bool {
        use Account::{
            CommissionExpense as Expense, FxConversion as Fx, MdfBudget as Mdf,
            PartnerPaid as Paid, PartnerPayable as Payable, PartnerPending as Pending,
            PayoutsClearing as Clearing,
        };
        match self {
            TransactionKind::Accrual => matches!((debit, credit), (Expense { .. }, Pending { .. })),
            TransactionKind::Maturity => {
                matches!((debit, credit), (Pending { .. }, Payable { .. }))
            }
            TransactionKind::Reversal => {
                matches!((debit, credit), (Pending { .. }, Expense { .. }))
            }
            TransactionKind::Clawback => {
                matches!((debit, credit), (Payable { .. }, Expense { .. }))
            }
            TransactionKind::PayoutCreated => {
                matches!((debit, credit), (Payable { .. }, Clearing { .. }))
            }
            TransactionKind::PayoutSettled => {
                matches!((debit, credit), (Clearing { .. }, Paid { .. }))
            }
            TransactionKind::PayoutFailed => {
                matches!((debit, credit), (Clearing { .. }, Payable { .. }))
            }
            TransactionKind::MdfReimbursement => {
                matches!((debit, credit), (Mdf { .. }, Payable { .. }))
            }
            TransactionKind::CampaignFee => {
                matches!((debit, credit), (Expense { .. }, Payable { .. }))
            }
            TransactionKind::Conversion => matches!(
                (debit, credit),
                (Payable { .. }, Fx { .. }) | (Fx { .. }, Payable { .. })
            ),
            TransactionKind::Adjustment => matches!(
                (debit, credit),
                (Expense { .. }, Payable { .. }) | (Payable { .. }, Expense { .. })
            ),
        }
    }
}

impl fmt::Display for TransactionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One movement of money: `amount` leaves `credit` and arrives in `debit`. The amount is positive,
/// a whole number of minor units, and in the currency of both accounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// The account debited.
    pub debit: Account,
    /// The account credited.
    pub credit: Account,
    /// How much.
    pub amount: Money,
}

/// The commission plan rule that computed an amount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanRef {
    /// The plan.
    pub plan_id: Uuid,
    /// Its version in force at the business date.
    pub plan_version: u32,
    /// The rule of that version that applied.
    pub rule_id: String,
}

/// The inputs of the formula that computed an amount, kept exact so the amount can be
/// recomputed years later. Absent fields did not take part.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormulaInputs {
    /// The amount a rate applied to (sale, revenue, volume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_amount: Option<Money>,
    /// The rate, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_percent: Option<Decimal>,
    /// The tier or band that applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Units sold or lots traded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<Decimal>,
    /// A flat amount (per unit, per lead, or per campaign).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flat_amount: Option<Money>,
    /// Which month of a recurring revenue share (1 for the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub month_index: Option<u32>,
    /// The exchange rate, units of the target currency per unit of the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fx_rate: Option<Decimal>,
    /// Anything else the formula used, as decimal strings.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub other: BTreeMap<String, String>,
}

/// Why a transaction exists: the fact that caused it, the rule that computed it, and a line a
/// person can read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    /// The event that caused the transaction.
    pub source_event_id: Uuid,
    /// The conversion (sale, lead, deposit) it is about, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversion_id: Option<Uuid>,
    /// The plan rule that computed the amount, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanRef>,
    /// The formula inputs.
    #[serde(default)]
    pub inputs: FormulaInputs,
    /// E.g. "10% of 100.00 USD sale".
    pub line: String,
}

impl Explanation {
    /// An explanation with a cause and a line and nothing else.
    pub fn new(source_event_id: Uuid, line: impl Into<String>) -> Explanation {
        Explanation {
            source_event_id,
            conversion_id: None,
            plan: None,
            inputs: FormulaInputs::default(),
            line: line.into(),
        }
    }

    /// Adds the conversion.
    #[must_use]
    pub fn with_conversion(mut self, conversion_id: Uuid) -> Explanation {
        self.conversion_id = Some(conversion_id);
        self
    }

    /// Adds the plan rule.
    #[must_use]
    pub fn with_plan(
        mut self,
        plan_id: Uuid,
        plan_version: u32,
        rule_id: impl Into<String>,
    ) -> Explanation {
        self.plan = Some(PlanRef {
            plan_id,
            plan_version,
            rule_id: rule_id.into(),
        });
        self
    }

    /// Sets the formula inputs.
    #[must_use]
    pub fn with_inputs(mut self, inputs: FormulaInputs) -> Explanation {
        self.inputs = inputs;
        self
    }

    fn validate(&self) -> Result<(), LedgerError> {
        check_len("line", &self.line, 1, MAX_EXPLANATION_LINE_CHARS)?;
        if let Some(plan) = &self.plan {
            check_len("rule id", &plan.rule_id, 1, MAX_EXPLANATION_LABEL_CHARS)?;
        }
        if let Some(tier) = &self.inputs.tier {
            check_len("tier", tier, 1, MAX_EXPLANATION_LABEL_CHARS)?;
        }
        let other = &self.inputs.other;
        if other.len() > MAX_EXPLANATION_INPUTS {
            return Err(LedgerError::TooManyInputs {
                count: other.len(),
                limit: MAX_EXPLANATION_INPUTS,
            });
        }
        other.iter().try_for_each(|(key, value)| {
            check_len("input key", key, 1, MAX_EXPLANATION_LABEL_CHARS)?;
            check_len("input value", value, 1, MAX_EXPLANATION_VALUE_CHARS)
        })
    }
}

fn check_len(field: &'static str, text: &str, min: usize, limit: usize) -> Result<(), LedgerError> {
    let length_chars = text.chars().count();
    if (min..=limit).contains(&length_chars) {
        Ok(())
    } else {
        Err(LedgerError::ExplanationField {
            field,
            length_chars,
            limit_chars: limit,
        })
    }
}

/// A set of transfers that balances per currency, with its business time and explanation.
///
/// Built only through [`Transaction::new`] (or the [`postings`](crate::postings) helpers), which
/// validate it. Deserializing does not validate: a stored transaction is re-validated by
/// [`Ledger::apply`](crate::Ledger::apply), so tampered data is refused on replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    id: Uuid,
    kind: TransactionKind,
    occurred_at: DateTime<Utc>,
    transfers: Vec<Transfer>,
    explanation: Explanation,
}

impl Transaction {
    /// Builds a transaction, refusing it unless [`Transaction::validate`] passes.
    pub fn new(
        id: Uuid,
        kind: TransactionKind,
        occurred_at: DateTime<Utc>,
        transfers: Vec<Transfer>,
        explanation: Explanation,
    ) -> Result<Transaction, LedgerError> {
        let transaction = Transaction {
            id,
            kind,
            occurred_at,
            transfers,
            explanation,
        };
        transaction.validate()?;
        Ok(transaction)
    }

    /// The id, unique in the ledger.
    pub const fn id(&self) -> Uuid {
        self.id
    }

    /// What it records.
    pub const fn kind(&self) -> TransactionKind {
        self.kind
    }

    /// Business time: when it happened, not when it was recorded.
    pub const fn occurred_at(&self) -> DateTime<Utc> {
        self.occurred_at
    }

    /// The transfers, in order.
    pub fn transfers(&self) -> &[Transfer] {
        &self.transfers
    }

    /// Why it exists.
    pub const fn explanation(&self) -> &Explanation {
        &self.explanation
    }

    /// Checks every invariant: 1 to [`MAX_TRANSACTION_TRANSFERS`] transfers; each amount
    /// positive, in whole minor units, at most [`MAX_TRANSFER_AMOUNT_MINOR_UNITS`], and in the
    /// currency of both accounts; no account debited and credited by one transfer; only the
    /// postings its kind allows; one partner only in a conversion or maturity; debits equal
    /// credits in every currency; a conversion between two currencies at least; the
    /// explanation within its limits.
    pub fn validate(&self) -> Result<(), LedgerError> {
        validate_postings(self.kind, &self.transfers)?;
        self.explanation.validate()
    }
}

/// The money invariants of [`Transaction::validate`] alone — everything but the explanation's
/// text limits: what a replay of balances must re-check on every transaction it folds in.
pub fn validate_postings(kind: TransactionKind, transfers: &[Transfer]) -> Result<(), LedgerError> {
    let count = transfers.len();
    if count == 0 {
        return Err(LedgerError::NoTransfers);
    }
    if count > MAX_TRANSACTION_TRANSFERS {
        return Err(LedgerError::TooManyTransfers {
            count,
            limit: MAX_TRANSACTION_TRANSFERS,
        });
    }
    for (index, transfer) in transfers.iter().enumerate() {
        check_transfer(kind, index, transfer)?;
    }
    // A transfer between two accounts of one currency adds the same to that currency's debits
    // and credits, so only transfers across currencies can unbalance a transaction: the sums
    // per currency are built for those alone (a map per transaction was a twentieth of a
    // replay, and almost every transaction stays within one currency).
    if transfers
        .iter()
        .any(|t| t.debit.currency() != t.credit.currency())
    {
        // Debits and credits per currency, each counted in its own account's currency so that
        // a transfer between accounts of different currencies shows up as an imbalance.
        let mut totals: BTreeMap<Currency, (i128, i128)> = BTreeMap::new();
        for transfer in transfers {
            let units = i128::from(transfer.amount.to_minor_units()?);
            totals.entry(transfer.debit.currency()).or_default().0 += units;
            totals.entry(transfer.credit.currency()).or_default().1 += units;
        }
        if let Some((&currency, &(debits, credits))) = totals
            .iter()
            .find(|(_, (debits, credits))| debits != credits)
        {
            return Err(LedgerError::Unbalanced {
                currency,
                debits_minor_units: debits,
                credits_minor_units: credits,
            });
        }
    }
    for (index, transfer) in transfers.iter().enumerate() {
        for account in [transfer.debit, transfer.credit] {
            if account.currency() != transfer.amount.currency() {
                return Err(LedgerError::CurrencyMismatch {
                    index,
                    amount: transfer.amount,
                    account,
                });
            }
        }
    }
    if matches!(
        kind,
        TransactionKind::Conversion | TransactionKind::Maturity
    ) {
        check_one_partner(transfers)?;
    }
    if kind == TransactionKind::Conversion
        && transfers
            .iter()
            .all(|t| t.amount.currency() == transfers[0].amount.currency())
    {
        return Err(LedgerError::ConversionWithinCurrency);
    }
    Ok(())
}

/// Checks one transfer on its own and returns its amount in minor units.
fn check_transfer(
    kind: TransactionKind,
    index: usize,
    transfer: &Transfer,
) -> Result<i64, LedgerError> {
    let Transfer {
        debit,
        credit,
        amount,
    } = *transfer;
    if !amount.is_positive() {
        return Err(LedgerError::NonPositiveAmount { index, amount });
    }
    let units = match amount.to_minor_units() {
        Ok(units) if units <= MAX_TRANSFER_AMOUNT_MINOR_UNITS => units,
        Err(pl_money::MoneyError::ExcessPrecision { .. }) => {
            return Err(LedgerError::SubMinorUnit { index, amount })
        }
        _ => {
            return Err(LedgerError::AmountTooLarge {
                index,
                amount,
                limit_minor_units: MAX_TRANSFER_AMOUNT_MINOR_UNITS,
            })
        }
    };
    if debit == credit {
        return Err(LedgerError::SelfTransfer {
            index,
            account: debit,
        });
    }
    if !kind.allows(&debit, &credit) {
        return Err(LedgerError::PostingNotAllowed {
            index,
            kind,
            debit,
            credit,
        });
    }
    Ok(units)
}

fn check_one_partner(transfers: &[Transfer]) -> Result<(), LedgerError> {
    let mut partners = transfers
        .iter()
        .flat_map(|t| [t.debit.partner_id(), t.credit.partner_id()])
        .flatten();
    let Some(first) = partners.next() else {
        return Ok(());
    };
    match partners.find(|p| *p != first) {
        Some(second) => Err(LedgerError::PartnersMixed { first, second }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(units: i64) -> Money {
        Money::from_minor_units(units, Currency::USD)
    }

    fn expense(currency: Currency) -> Account {
        Account::CommissionExpense {
            program_id: Uuid::from_u128(2),
            currency,
        }
    }

    fn pending(currency: Currency) -> Account {
        Account::PartnerPending {
            partner_id: Uuid::from_u128(1),
            currency,
        }
    }

    fn accrual(transfers: Vec<Transfer>) -> Result<Transaction, LedgerError> {
        Transaction::new(
            Uuid::from_u128(9),
            TransactionKind::Accrual,
            DateTime::UNIX_EPOCH,
            transfers,
            Explanation::new(Uuid::from_u128(10), "10% of 100.00 USD sale"),
        )
    }

    fn transfer(amount: Money) -> Transfer {
        Transfer {
            debit: expense(Currency::USD),
            credit: pending(Currency::USD),
            amount,
        }
    }

    #[test]
    fn given_no_transfers_when_building_then_it_is_refused() {
        assert_eq!(accrual(vec![]), Err(LedgerError::NoTransfers));
    }

    #[test]
    fn given_one_transfer_over_the_limit_when_building_then_it_is_refused() {
        let transfers = vec![transfer(usd(1)); MAX_TRANSACTION_TRANSFERS + 1];
        assert!(matches!(
            accrual(transfers),
            Err(LedgerError::TooManyTransfers { count: 65, .. })
        ));
        assert!(accrual(vec![transfer(usd(1)); MAX_TRANSACTION_TRANSFERS]).is_ok());
    }

    #[test]
    fn given_a_zero_or_negative_amount_when_building_then_it_is_refused() {
        for amount in [usd(0), usd(-100)] {
            assert!(matches!(
                accrual(vec![transfer(amount)]),
                Err(LedgerError::NonPositiveAmount { index: 0, .. })
            ));
        }
    }

    #[test]
    fn given_an_unrounded_amount_when_building_then_it_is_refused() {
        let amount = Money::new(Decimal::new(10_005, 3), Currency::USD);
        assert!(matches!(
            accrual(vec![transfer(amount)]),
            Err(LedgerError::SubMinorUnit { .. })
        ));
        // Trailing zeros are still whole cents.
        assert!(accrual(vec![transfer(Money::new(
            Decimal::new(10_000, 3),
            Currency::USD
        ))])
        .is_ok());
    }

    #[test]
    fn given_an_amount_above_the_limit_when_building_then_it_is_refused() {
        let amount = usd(MAX_TRANSFER_AMOUNT_MINOR_UNITS + 1);
        assert!(matches!(
            accrual(vec![transfer(amount)]),
            Err(LedgerError::AmountTooLarge { .. })
        ));
    }

    #[test]
    fn given_an_amount_in_another_currency_than_its_accounts_when_building_then_it_is_refused() {
        let amount = Money::from_minor_units(100, Currency::EUR);
        assert!(matches!(
            accrual(vec![transfer(amount)]),
            Err(LedgerError::CurrencyMismatch { index: 0, .. })
        ));
    }

    #[test]
    fn given_accounts_in_two_currencies_when_building_then_it_does_not_balance() {
        let mixed = Transfer {
            debit: expense(Currency::USD),
            credit: pending(Currency::EUR),
            amount: usd(100),
        };
        assert_eq!(
            accrual(vec![mixed]),
            Err(LedgerError::Unbalanced {
                currency: Currency::EUR,
                debits_minor_units: 0,
                credits_minor_units: 100,
            })
        );
    }

    #[test]
    fn given_a_transfer_to_the_same_account_when_building_then_it_is_refused() {
        let same = Transfer {
            debit: pending(Currency::USD),
            credit: pending(Currency::USD),
            amount: usd(100),
        };
        assert!(matches!(
            accrual(vec![same]),
            Err(LedgerError::SelfTransfer { .. })
        ));
    }

    #[test]
    fn given_a_posting_its_kind_does_not_allow_when_building_then_it_is_refused() {
        let backwards = Transfer {
            debit: pending(Currency::USD),
            credit: expense(Currency::USD),
            amount: usd(100),
        };
        assert!(matches!(
            accrual(vec![backwards]),
            Err(LedgerError::PostingNotAllowed {
                kind: TransactionKind::Accrual,
                ..
            })
        ));
    }

    #[test]
    fn given_a_maturity_into_another_partners_payable_when_building_then_it_is_refused() {
        let stolen = Transfer {
            debit: pending(Currency::USD),
            credit: Account::PartnerPayable {
                partner_id: Uuid::from_u128(666),
                currency: Currency::USD,
            },
            amount: usd(100),
        };
        let result = Transaction::new(
            Uuid::from_u128(9),
            TransactionKind::Maturity,
            DateTime::UNIX_EPOCH,
            vec![stolen],
            Explanation::new(Uuid::from_u128(10), "hold over"),
        );
        assert!(matches!(result, Err(LedgerError::PartnersMixed { .. })));
    }

    #[test]
    fn given_an_empty_or_overlong_explanation_when_building_then_it_is_refused() {
        for line in [String::new(), "x".repeat(MAX_EXPLANATION_LINE_CHARS + 1)] {
            let result = Transaction::new(
                Uuid::from_u128(9),
                TransactionKind::Accrual,
                DateTime::UNIX_EPOCH,
                vec![transfer(usd(1))],
                Explanation::new(Uuid::from_u128(10), line),
            );
            assert!(matches!(
                result,
                Err(LedgerError::ExplanationField { field: "line", .. })
            ));
        }
    }

    #[test]
    fn a_transaction_round_trips_through_json_with_amounts_as_strings() {
        let inputs = FormulaInputs {
            base_amount: Some(usd(10_000)),
            rate_percent: Some(Decimal::TEN),
            ..FormulaInputs::default()
        };
        let explanation = Explanation::new(Uuid::from_u128(10), "10% of 100.00 USD sale")
            .with_conversion(Uuid::from_u128(11))
            .with_plan(Uuid::from_u128(12), 3, "base-rate")
            .with_inputs(inputs);
        let built = Transaction::new(
            Uuid::from_u128(9),
            TransactionKind::Accrual,
            DateTime::UNIX_EPOCH,
            vec![transfer(usd(1_000))],
            explanation,
        )
        .unwrap();
        let json = serde_json::to_string(&built).unwrap();
        assert!(json.contains(r#""rate_percent":"10""#), "{json}");
        assert!(json.contains(r#""amount":"10.00""#), "{json}");
        assert_eq!(serde_json::from_str::<Transaction>(&json).unwrap(), built);
    }
}

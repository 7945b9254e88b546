//! The chart of accounts: which accounts exist, whose they are, and on which side they grow.

use std::fmt;

use pl_money::Currency;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The side on which an account's balance grows. Balances are shown positive on the normal side:
/// debits minus credits for a debit-normal account, credits minus debits for a credit-normal one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NormalSide {
    /// Assets and expenses.
    Debit,
    /// Liabilities, and money that left.
    Credit,
}

/// One account of the chart (see the crate docs for what each balance means). Every account
/// holds exactly one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Account {
    /// Commission earned by a partner and still in hold. Credit-normal.
    PartnerPending {
        /// The partner.
        partner_id: Uuid,
        /// The currency.
        currency: Currency,
    },
    /// What the company owes a partner now. Credit-normal; negative after a clawback of money
    /// already paid, when the partner owes the company.
    PartnerPayable {
        /// The partner.
        partner_id: Uuid,
        /// The currency.
        currency: Currency,
    },
    /// Everything settled to a partner to date: the cash side of payouts, per partner.
    /// Credit-normal.
    PartnerPaid {
        /// The partner.
        partner_id: Uuid,
        /// The currency.
        currency: Currency,
    },
    /// A program's commission cost, net of reversals and clawbacks. Debit-normal.
    CommissionExpense {
        /// The program.
        program_id: Uuid,
        /// The currency.
        currency: Currency,
    },
    /// Payouts sent but neither settled nor failed yet. Credit-normal.
    PayoutsClearing {
        /// The program.
        program_id: Uuid,
        /// The currency.
        currency: Currency,
    },
    /// Market-development funds a program has reimbursed to partners. Debit-normal.
    MdfBudget {
        /// The program.
        program_id: Uuid,
        /// The currency.
        currency: Currency,
    },
    /// The bridge through which a payable changes currency. Debit-normal.
    FxConversion {
        /// The currency.
        currency: Currency,
    },
}

impl Account {
    /// The one currency the account holds.
    pub const fn currency(&self) -> Currency {
        match *self {
            Account::PartnerPending { currency, .. }
            | Account::PartnerPayable { currency, .. }
            | Account::PartnerPaid { currency, .. }
            | Account::CommissionExpense { currency, .. }
            | Account::PayoutsClearing { currency, .. }
            | Account::MdfBudget { currency, .. }
            | Account::FxConversion { currency } => currency,
        }
    }

    /// The side on which the balance grows.
    pub const fn normal_side(&self) -> NormalSide {
        match self {
            Account::CommissionExpense { .. }
            | Account::MdfBudget { .. }
            | Account::FxConversion { .. } => NormalSide::Debit,
            Account::PartnerPending { .. }
            | Account::PartnerPayable { .. }
            | Account::PartnerPaid { .. }
            | Account::PayoutsClearing { .. } => NormalSide::Credit,
        }
    }

    /// The partner owning the account, for partner accounts.
    pub const fn partner_id(&self) -> Option<Uuid> {
        match *self {
            Account::PartnerPending { partner_id, .. }
            | Account::PartnerPayable { partner_id, .. }
            | Account::PartnerPaid { partner_id, .. } => Some(partner_id),
            _ => None,
        }
    }

    /// The program owning the account, for program accounts.
    pub const fn program_id(&self) -> Option<Uuid> {
        match *self {
            Account::CommissionExpense { program_id, .. }
            | Account::PayoutsClearing { program_id, .. }
            | Account::MdfBudget { program_id, .. } => Some(program_id),
            _ => None,
        }
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let currency = self.currency();
        match self {
            Account::PartnerPending { partner_id, .. } => {
                write!(f, "partner {partner_id} pending {currency}")
            }
            Account::PartnerPayable { partner_id, .. } => {
                write!(f, "partner {partner_id} payable {currency}")
            }
            Account::PartnerPaid { partner_id, .. } => {
                write!(f, "partner {partner_id} paid {currency}")
            }
            Account::CommissionExpense { program_id, .. } => {
                write!(f, "program {program_id} commission expense {currency}")
            }
            Account::PayoutsClearing { program_id, .. } => {
                write!(f, "program {program_id} payouts clearing {currency}")
            }
            Account::MdfBudget { program_id, .. } => {
                write!(f, "program {program_id} mdf budget {currency}")
            }
            Account::FxConversion { .. } => write!(f, "fx conversion {currency}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partner_liabilities_are_credit_normal_and_program_costs_debit_normal() {
        let partner_id = Uuid::from_u128(1);
        let program_id = Uuid::from_u128(2);
        let currency = Currency::EUR;
        let payable = Account::PartnerPayable {
            partner_id,
            currency,
        };
        let expense = Account::CommissionExpense {
            program_id,
            currency,
        };
        assert_eq!(payable.normal_side(), NormalSide::Credit);
        assert_eq!(expense.normal_side(), NormalSide::Debit);
        assert_eq!(
            (payable.partner_id(), payable.program_id()),
            (Some(partner_id), None)
        );
        assert_eq!(
            (expense.partner_id(), expense.program_id()),
            (None, Some(program_id))
        );
    }

    #[test]
    fn an_account_serializes_as_a_tagged_object_and_reads_back_equal() {
        let account = Account::PartnerPending {
            partner_id: Uuid::from_u128(7),
            currency: Currency::USD,
        };
        let json = serde_json::to_string(&account).unwrap();
        assert_eq!(
            json,
            r#"{"type":"PartnerPending","partner_id":"00000000-0000-0000-0000-000000000007","currency":"USD"}"#
        );
        assert_eq!(serde_json::from_str::<Account>(&json).unwrap(), account);
    }
}

//! ISO 4217 currencies with their minor units.
//!
//! The table holds the circulating currencies of ISO 4217 list one (published 2026-01-01). Fund
//! codes (BOV, CLF, USN, ...), precious metals, bond-market units, SDR and the testing codes are
//! left out on purpose: a ledger never books them, and most have no minor unit at all. Minor units
//! follow ISO, not market habit (HUF has 2, ISK has 0), because counterparties settle in ISO units.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::MoneyError;

macro_rules! currencies {
    ($($code:ident $numeric:literal $minor:literal $name:literal;)+) => {
        /// An ISO 4217 currency.
        ///
        /// One byte, `Copy`, hashable and ordered by code. It displays, parses and serializes as its
        /// three-letter code (uppercase only; anything else is [`MoneyError::UnknownCurrency`]).
        ///
        /// ```
        /// use pl_money::Currency;
        ///
        /// let kwd: Currency = "KWD".parse()?;
        /// assert_eq!((kwd.code(), kwd.minor_unit(), kwd.numeric()), ("KWD", 3, 414));
        /// assert!("kwd".parse::<Currency>().is_err());
        /// # Ok::<(), pl_money::MoneyError>(())
        /// ```
        // The variants are the ISO codes themselves, so they stay uppercase.
        #[allow(clippy::upper_case_acronyms)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum Currency {
            $(
                #[doc = concat!($name, " (ISO 4217 numeric ", stringify!($numeric), ", ",
                    stringify!($minor), " decimal places).")]
                $code,
            )+
        }

        impl Currency {
            /// Every supported currency, in code order. (A function, not a constant named
            /// `ALL`: that name is taken by the Albanian lek.)
            pub const fn all() -> &'static [Currency] {
                &[$(Currency::$code),+]
            }

            /// The three-letter ISO 4217 code, e.g. `"USD"`.
            pub const fn code(self) -> &'static str {
                match self { $(Currency::$code => stringify!($code),)+ }
            }

            /// Number of decimal places of the minor unit: 2 for USD (cents), 0 for JPY, 3 for KWD.
            pub const fn minor_unit(self) -> u32 {
                match self { $(Currency::$code => $minor,)+ }
            }

            /// The ISO 4217 numeric code, e.g. 840 for USD.
            pub const fn numeric(self) -> u16 {
                match self { $(Currency::$code => $numeric,)+ }
            }

            /// The currency of an ISO 4217 numeric code, e.g. USD for 840; `None` for a code
            /// this version does not know.
            pub const fn from_numeric(numeric: u16) -> Option<Currency> {
                match numeric { $($numeric => Some(Currency::$code),)+ _ => None }
            }

            /// The ISO 4217 English name, e.g. `"US Dollar"`.
            pub const fn name(self) -> &'static str {
                match self { $(Currency::$code => $name,)+ }
            }
        }

        impl FromStr for Currency {
            type Err = MoneyError;

            fn from_str(code: &str) -> Result<Self, Self::Err> {
                // A binary search of the codes in order, each packed into one integer: a
                // string `match` over all of them compares them one by one, and a search over
                // the strings calls `memcmp` at every step (a tenth of decoding a book event
                // whole, which parses a currency per amount).
                let unknown = || MoneyError::UnknownCurrency(code.to_owned());
                let &[a, b, c] = code.as_bytes() else {
                    return Err(unknown());
                };
                let key = pack([a, b, c]);
                BY_KEY
                    .binary_search_by_key(&key, |(k, _)| *k)
                    .map(|i| BY_KEY[i].1)
                    .map_err(|_| unknown())
            }
        }

        /// A three-byte code as one integer, first byte highest: packed codes order as the
        /// codes do.
        const fn pack(code: [u8; 3]) -> u32 {
            ((code[0] as u32) << 16) | ((code[1] as u32) << 8) | (code[2] as u32)
        }

        const fn pack_code(code: &str) -> u32 {
            let b = code.as_bytes();
            pack([b[0], b[1], b[2]])
        }

        /// Every currency by its packed code, in the order of the codes (a test keeps it so).
        const BY_KEY: &[(u32, Currency)] = &[$((pack_code(stringify!($code)), Currency::$code),)+];
    };
}

currencies! {
    AED 784 2 "UAE Dirham";
    AFN 971 2 "Afghani";
    ALL   8 2 "Lek";
    AMD  51 2 "Armenian Dram";
    AOA 973 2 "Kwanza";
    ARS  32 2 "Argentine Peso";
    AUD  36 2 "Australian Dollar";
    AWG 533 2 "Aruban Florin";
    AZN 944 2 "Azerbaijan Manat";
    BAM 977 2 "Convertible Mark";
    BBD  52 2 "Barbados Dollar";
    BDT  50 2 "Taka";
    BHD  48 3 "Bahraini Dinar";
    BIF 108 0 "Burundi Franc";
    BMD  60 2 "Bermudian Dollar";
    BND  96 2 "Brunei Dollar";
    BOB  68 2 "Boliviano";
    BRL 986 2 "Brazilian Real";
    BSD  44 2 "Bahamian Dollar";
    BTN  64 2 "Ngultrum";
    BWP  72 2 "Pula";
    BYN 933 2 "Belarusian Ruble";
    BZD  84 2 "Belize Dollar";
    CAD 124 2 "Canadian Dollar";
    CDF 976 2 "Congolese Franc";
    CHF 756 2 "Swiss Franc";
    CLP 152 0 "Chilean Peso";
    CNY 156 2 "Yuan Renminbi";
    COP 170 2 "Colombian Peso";
    CRC 188 2 "Costa Rican Colon";
    CUP 192 2 "Cuban Peso";
    CVE 132 2 "Cabo Verde Escudo";
    CZK 203 2 "Czech Koruna";
    DJF 262 0 "Djibouti Franc";
    DKK 208 2 "Danish Krone";
    DOP 214 2 "Dominican Peso";
    DZD  12 2 "Algerian Dinar";
    EGP 818 2 "Egyptian Pound";
    ERN 232 2 "Nakfa";
    ETB 230 2 "Ethiopian Birr";
    EUR 978 2 "Euro";
    FJD 242 2 "Fiji Dollar";
    FKP 238 2 "Falkland Islands Pound";
    GBP 826 2 "Pound Sterling";
    GEL 981 2 "Lari";
    GHS 936 2 "Ghana Cedi";
    GIP 292 2 "Gibraltar Pound";
    GMD 270 2 "Dalasi";
    GNF 324 0 "Guinean Franc";
    GTQ 320 2 "Quetzal";
    GYD 328 2 "Guyana Dollar";
    HKD 344 2 "Hong Kong Dollar";
    HNL 340 2 "Lempira";
    HTG 332 2 "Gourde";
    HUF 348 2 "Forint";
    IDR 360 2 "Rupiah";
    ILS 376 2 "New Israeli Sheqel";
    INR 356 2 "Indian Rupee";
    IQD 368 3 "Iraqi Dinar";
    IRR 364 2 "Iranian Rial";
    ISK 352 0 "Iceland Krona";
    JMD 388 2 "Jamaican Dollar";
    JOD 400 3 "Jordanian Dinar";
    JPY 392 0 "Yen";
    KES 404 2 "Kenyan Shilling";
    KGS 417 2 "Som";
    KHR 116 2 "Riel";
    KMF 174 0 "Comorian Franc";
    KPW 408 2 "North Korean Won";
    KRW 410 0 "Won";
    KWD 414 3 "Kuwaiti Dinar";
    KYD 136 2 "Cayman Islands Dollar";
    KZT 398 2 "Tenge";
    LAK 418 2 "Lao Kip";
    LBP 422 2 "Lebanese Pound";
    LKR 144 2 "Sri Lanka Rupee";
    LRD 430 2 "Liberian Dollar";
    LSL 426 2 "Loti";
    LYD 434 3 "Libyan Dinar";
    MAD 504 2 "Moroccan Dirham";
    MDL 498 2 "Moldovan Leu";
    MGA 969 2 "Malagasy Ariary";
    MKD 807 2 "Denar";
    MMK 104 2 "Kyat";
    MNT 496 2 "Tugrik";
    MOP 446 2 "Pataca";
    MRU 929 2 "Ouguiya";
    MUR 480 2 "Mauritius Rupee";
    MVR 462 2 "Rufiyaa";
    MWK 454 2 "Malawi Kwacha";
    MXN 484 2 "Mexican Peso";
    MYR 458 2 "Malaysian Ringgit";
    MZN 943 2 "Mozambique Metical";
    NAD 516 2 "Namibia Dollar";
    NGN 566 2 "Naira";
    NIO 558 2 "Cordoba Oro";
    NOK 578 2 "Norwegian Krone";
    NPR 524 2 "Nepalese Rupee";
    NZD 554 2 "New Zealand Dollar";
    OMR 512 3 "Rial Omani";
    PAB 590 2 "Balboa";
    PEN 604 2 "Sol";
    PGK 598 2 "Kina";
    PHP 608 2 "Philippine Peso";
    PKR 586 2 "Pakistan Rupee";
    PLN 985 2 "Zloty";
    PYG 600 0 "Guarani";
    QAR 634 2 "Qatari Rial";
    RON 946 2 "Romanian Leu";
    RSD 941 2 "Serbian Dinar";
    RUB 643 2 "Russian Ruble";
    RWF 646 0 "Rwanda Franc";
    SAR 682 2 "Saudi Riyal";
    SBD  90 2 "Solomon Islands Dollar";
    SCR 690 2 "Seychelles Rupee";
    SDG 938 2 "Sudanese Pound";
    SEK 752 2 "Swedish Krona";
    SGD 702 2 "Singapore Dollar";
    SHP 654 2 "Saint Helena Pound";
    SLE 925 2 "Leone";
    SOS 706 2 "Somali Shilling";
    SRD 968 2 "Surinam Dollar";
    SSP 728 2 "South Sudanese Pound";
    STN 930 2 "Dobra";
    SVC 222 2 "El Salvador Colon";
    SYP 760 2 "Syrian Pound";
    SZL 748 2 "Lilangeni";
    THB 764 2 "Baht";
    TJS 972 2 "Somoni";
    TMT 934 2 "Turkmenistan New Manat";
    TND 788 3 "Tunisian Dinar";
    TOP 776 2 "Pa’anga";
    TRY 949 2 "Turkish Lira";
    TTD 780 2 "Trinidad and Tobago Dollar";
    TWD 901 2 "New Taiwan Dollar";
    TZS 834 2 "Tanzanian Shilling";
    UAH 980 2 "Hryvnia";
    UGX 800 0 "Uganda Shilling";
    USD 840 2 "US Dollar";
    UYU 858 2 "Peso Uruguayo";
    UZS 860 2 "Uzbekistan Sum";
    VED 926 2 "Bolívar Soberano";
    VES 928 2 "Bolívar Soberano";
    VND 704 0 "Dong";
    VUV 548 0 "Vatu";
    WST 882 2 "Tala";
    XAF 950 0 "CFA Franc BEAC";
    XCD 951 2 "East Caribbean Dollar";
    XCG 532 2 "Caribbean Guilder";
    XOF 952 0 "CFA Franc BCEAO";
    XPF 953 0 "CFP Franc";
    YER 886 2 "Yemeni Rial";
    ZAR 710 2 "Rand";
    ZMW 967 2 "Zambian Kwacha";
    ZWG 924 2 "Zimbabwe Gold";
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.code())
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CodeVisitor;

        impl Visitor<'_> for CodeVisitor {
            type Value = Currency;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an ISO 4217 currency code such as \"USD\"")
            }

            fn visit_str<E: de::Error>(self, code: &str) -> Result<Currency, E> {
                code.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_str(CodeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn every_code_parses_to_its_currency_because_the_codes_are_listed_in_order() {
        assert!(BY_KEY.windows(2).all(|w| w[0].0 < w[1].0));
        for (key, currency) in BY_KEY {
            assert_eq!(*key, pack_code(currency.code()));
            assert_eq!(currency.code().parse::<Currency>().unwrap(), *currency);
        }
        assert_eq!(BY_KEY.len(), Currency::all().len());
        for code in ["USX", "", "US", "USDX", "U\u{e9}", "\u{20ac}"] {
            assert!(code.parse::<Currency>().is_err(), "{code:?}");
        }
    }

    #[test]
    fn every_code_parses_back_to_its_currency() {
        for &currency in Currency::all() {
            assert_eq!(currency.code().parse::<Currency>(), Ok(currency));
            assert_eq!(currency.to_string(), currency.code());
        }
    }

    #[test]
    fn every_numeric_code_finds_its_currency_and_no_other_number_finds_one() {
        for &currency in Currency::all() {
            assert_eq!(Currency::from_numeric(currency.numeric()), Some(currency));
        }
        let known = (0..=u16::MAX)
            .filter(|&n| Currency::from_numeric(n).is_some())
            .count();
        assert_eq!(known, Currency::all().len());
        assert_eq!(Currency::from_numeric(0), None);
    }

    #[test]
    fn currencies_are_ordered_by_code() {
        assert!(Currency::all().windows(2).all(|w| w[0] < w[1]));
        assert!(Currency::all()
            .windows(2)
            .all(|w| w[0].code() < w[1].code()));
    }

    #[test]
    fn codes_and_numeric_codes_are_unique_and_well_formed() {
        let numerics: HashSet<u16> = Currency::all().iter().map(|c| c.numeric()).collect();
        assert_eq!(numerics.len(), Currency::all().len());
        for currency in Currency::all() {
            let code = currency.code();
            assert!(code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()));
            assert!((1..=999).contains(&currency.numeric()));
            assert!(!currency.name().is_empty());
        }
    }

    #[test]
    fn minor_units_match_iso_4217() {
        let expected = [
            ("USD", 2, 840),
            ("EUR", 2, 978),
            ("GBP", 2, 826),
            ("JPY", 0, 392),
            ("KRW", 0, 410),
            ("CHF", 2, 756),
            ("HUF", 2, 348),
            ("ISK", 0, 352),
            ("CLP", 0, 152),
            ("VND", 0, 704),
            ("UGX", 0, 800),
            ("BHD", 3, 48),
            ("KWD", 3, 414),
            ("OMR", 3, 512),
            ("JOD", 3, 400),
            ("TND", 3, 788),
            ("IQD", 3, 368),
            ("LYD", 3, 434),
        ];
        for (code, minor, numeric) in expected {
            let currency: Currency = code.parse().unwrap();
            assert_eq!(
                (currency.minor_unit(), currency.numeric()),
                (minor, numeric),
                "{code}"
            );
        }
    }

    #[test]
    fn every_minor_unit_is_between_zero_and_three() {
        // Money::from_minor_units relies on this to build its Decimal without a fallible scale.
        assert!(Currency::all().iter().all(|c| c.minor_unit() <= 3));
    }

    #[test]
    fn codes_parse_case_sensitively() {
        assert_eq!(
            "usd".parse::<Currency>(),
            Err(MoneyError::UnknownCurrency("usd".into()))
        );
        assert!("Usd".parse::<Currency>().is_err());
        assert!(" USD".parse::<Currency>().is_err());
        assert!("".parse::<Currency>().is_err());
        assert!("XXX".parse::<Currency>().is_err());
    }

    #[test]
    fn unknown_code_error_names_the_code() {
        let err = "ABC".parse::<Currency>().unwrap_err();
        assert_eq!(err.to_string(), "unknown currency code \"ABC\"");
    }

    #[test]
    fn currency_serializes_as_its_code() {
        assert_eq!(serde_json::to_string(&Currency::JPY).unwrap(), "\"JPY\"");
        assert_eq!(
            serde_json::from_str::<Currency>("\"BHD\"").unwrap(),
            Currency::BHD
        );
        assert!(serde_json::from_str::<Currency>("\"bhd\"").is_err());
        assert!(serde_json::from_str::<Currency>("840").is_err());
    }
}

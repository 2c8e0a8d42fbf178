//! Paging, one rule for every service and gateway: page 0 means 1, size 0 means
//! [`DEFAULT_SIZE`], and [`MAX_SIZE`] is the largest page. A service caps a larger size (the
//! original's gRPC callers expect that); a gateway refuses it with a 400 before calling
//! ([`PageQuery::checked`]), so a REST client never takes a short page for all it asked.

use std::collections::BTreeMap;

use serde::Deserialize;
use utoipa::{
    IntoParams,
    openapi::{
        KnownFormat, ObjectBuilder, Required, SchemaFormat, Type,
        path::{Parameter, ParameterBuilder, ParameterIn},
    },
};

use crate::http::ApiError;

/// The size of a page asked for with size 0.
pub const DEFAULT_SIZE: u32 = 10;
/// The largest page.
pub const MAX_SIZE: u32 = 100;

/// A page a service reads: number ≥ 1, size in 1..=[`MAX_SIZE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub number: u32,
    pub size: u32,
}

impl Page {
    /// Page 0 means 1, size 0 means [`DEFAULT_SIZE`], a size above [`MAX_SIZE`] is capped.
    pub fn new(number: u32, size: u32) -> Self {
        let size = match size {
            0 => DEFAULT_SIZE,
            s => s.min(MAX_SIZE),
        };
        Self {
            number: number.max(1),
            size,
        }
    }

    /// Rows before the page.
    pub fn offset(&self) -> i64 {
        (i64::from(self.number) - 1) * i64::from(self.size)
    }
}

/// A gateway's `?pn=&psize=`; its OpenAPI parameters state the bounds from the constants
/// above.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct PageQuery {
    pub pn: Option<u32>,
    pub psize: Option<u32>,
}

impl PageQuery {
    /// `(number, size)` for the service, absent as 0 (the service applies the defaults); a
    /// 400 naming `psize` when it is above [`MAX_SIZE`].
    pub fn checked(&self) -> Result<(u32, u32), ApiError> {
        if let Some(size) = self.psize.filter(|s| *s > MAX_SIZE) {
            let why = format!("must be at most {MAX_SIZE}, got {size}");
            return Err(ApiError::BadRequest {
                message: format!("psize: {why}"),
                fields: BTreeMap::from([("psize".to_owned(), why)]),
            });
        }
        Ok((self.pn.unwrap_or(0), self.psize.unwrap_or(0)))
    }
}

impl IntoParams for PageQuery {
    fn into_params(parameter_in: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let param = |name: &str, description: String, maximum: u64, format: KnownFormat| {
            ParameterBuilder::new()
                .name(name)
                .parameter_in(parameter_in().unwrap_or(ParameterIn::Query))
                .required(Required::False)
                .description(Some(description))
                .schema(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .format(Some(SchemaFormat::KnownFormat(format)))
                        .minimum(Some(0))
                        .maximum(Some(maximum)),
                ))
                .build()
        };
        vec![
            param(
                "pn",
                "Page number, from 1 (0 or absent means 1).".to_owned(),
                u64::from(u32::MAX),
                KnownFormat::Int64,
            ),
            param(
                "psize",
                format!(
                    "Page size, at most {MAX_SIZE} (0 or absent means {DEFAULT_SIZE}); larger is a 400."
                ),
                u64::from(MAX_SIZE),
                KnownFormat::Int32,
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_fills_in_and_caps_a_gateway_refuses() {
        assert_eq!(
            Page::new(0, 0),
            Page {
                number: 1,
                size: DEFAULT_SIZE
            }
        );
        assert_eq!(Page::new(3, MAX_SIZE + 1).size, MAX_SIZE);
        assert_eq!(Page::new(3, MAX_SIZE).offset(), 2 * i64::from(MAX_SIZE));
        assert_eq!(
            Page::new(u32::MAX, u32::MAX).offset(),
            (i64::from(u32::MAX) - 1) * i64::from(MAX_SIZE),
            "the largest page number does not overflow"
        );

        let ok = PageQuery {
            pn: Some(2),
            psize: Some(MAX_SIZE),
        };
        assert_eq!(ok.checked().ok(), Some((2, MAX_SIZE)));
        assert_eq!(PageQuery::default().checked().ok(), Some((0, 0)));
        let big = PageQuery {
            pn: None,
            psize: Some(MAX_SIZE + 1),
        };
        match big.checked() {
            Err(ApiError::BadRequest { fields, .. }) => assert!(fields.contains_key("psize")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_documented_bounds_are_the_enforced_ones() {
        let params = PageQuery::into_params(|| Some(ParameterIn::Query));
        let json = serde_json::to_value(&params).expect("json");
        let psize = json
            .as_array()
            .and_then(|a| a.iter().find(|p| p["name"] == "psize"))
            .expect("psize");
        assert_eq!(psize["schema"]["maximum"], MAX_SIZE);
        assert_eq!(psize["schema"]["minimum"], 0);
        assert_eq!(psize["in"], "query");
    }
}

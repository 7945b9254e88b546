//! The integration messages CRM's consumer refused: listed, and retried once the cause is gone.

use pl_proto::common::v1 as common;
use pl_runtime::{dead_letters, ApiError};

use super::CrmService;
use crate::SERVICE;

pub async fn list(
    s: &CrmService,
    req: common::ListDeadLettersRequest,
) -> Result<common::ListDeadLettersResponse, ApiError> {
    dead_letters::list(s.store.as_ref(), SERVICE, &req).await
}

pub async fn retry(
    s: &CrmService,
    req: common::RetryDeadLetterRequest,
) -> Result<common::RetryDeadLetterResponse, ApiError> {
    let store = s.store.as_ref();
    dead_letters::retry_request(
        store,
        SERVICE,
        s.clock.as_ref(),
        pl_telemetry::inject(&tracing::Span::current()),
        &req,
        |message| crate::consumer::handle(store, message),
    )
    .await
}

//! REST handlers under `/@prefix@/v1/@name@`, their JSON types and the OpenAPI document. Handlers
//! translate HTTP to @name@-srv calls and back; rules live in @name@-srv.

use axum::{
    Router,
    extract::{Path, State},
    http::StatusCode,
    routing::{get, post},
};
use kit::{
    http::{
        AdminUser, ApiError, CallContext, ErrorBody, Json, JsonBody, QueryParams,
        UpstreamFailures,
    },
    page::PageQuery,
    upstream::Retry,
};
use proto::@snake@::v1::{CreateItemRequest, GetItemRequest, Item, ListItemsRequest};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use crate::state::AppState;

pub const LIST: &str = "/@prefix@/v1/@name@/list";
pub const CREATE: &str = "/@prefix@/v1/@name@";
pub const ITEM: &str = "/@prefix@/v1/@name@/{id}";

/// The `/@prefix@/v1/@name@` routes with their state; the kit's edge adds the rest.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(LIST, get(list))
        .route(CREATE, post(create))
        .route(ITEM, get(item))
        .with_state(state)
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct ItemView {
    pub id: i64,
    pub name: String,
    /// In the smallest currency unit.
    pub price: i64,
    /// Unix seconds.
    pub created_at: i64,
}

impl From<Item> for ItemView {
    fn from(i: Item) -> Self {
        Self {
            id: i.id,
            name: i.name,
            price: i.price,
            created_at: i.created_at,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ItemList {
    pub total: i64,
    pub data: Vec<ItemView>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct NewItem {
    /// 1 to 64 characters, unique.
    #[schema(min_length = 1, max_length = 64)]
    pub name: String,
    #[schema(minimum = 0)]
    pub price: i64,
}

/// A page of items.
#[utoipa::path(get, path = "/@prefix@/v1/@name@/list", params(PageQuery),
    responses((status = 200, body = ItemList), (status = 400, body = ErrorBody),
        UpstreamFailures))]
pub async fn list(
    State(state): State<AppState>,
    ctx: CallContext,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Json<ItemList>, ApiError> {
    let (pn, p_size) = q.checked()?;
    let request = ListItemsRequest { pn, p_size };
    let page = state
        .@snake@
        .call(&ctx, Retry::Idempotent, request, |mut c, r| async move {
            c.list_items(r).await
        })
        .await?;
    Ok(Json(ItemList {
        total: page.total,
        data: page.data.into_iter().map(ItemView::from).collect(),
    }))
}

/// One item.
#[utoipa::path(get, path = "/@prefix@/v1/@name@/{id}", params(("id" = i64, Path, minimum = 1)),
    responses((status = 200, body = ItemView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), UpstreamFailures))]
pub async fn item(
    State(state): State<AppState>,
    ctx: CallContext,
    path: Result<Path<i64>, axum::extract::rejection::PathRejection>,
) -> Result<Json<ItemView>, ApiError> {
    let Path(id) = path.map_err(|r| ApiError::bad_request(r.body_text()))?;
    let item = state
        .@snake@
        .call(&ctx, Retry::Idempotent, GetItemRequest { id }, |mut c, r| async move {
            c.get_item(r).await
        })
        .await?;
    Ok(Json(item.into()))
}

/// Creates an item (admins only).
#[utoipa::path(post, path = "/@prefix@/v1/@name@", request_body = NewItem, security(("bearer" = [])),
    responses((status = 201, body = ItemView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), UpstreamFailures))]
pub async fn create(
    State(state): State<AppState>,
    _admin: AdminUser,
    ctx: CallContext,
    JsonBody(body): JsonBody<NewItem>,
) -> Result<(StatusCode, Json<ItemView>), ApiError> {
    let request = CreateItemRequest {
        name: body.name,
        price: body.price,
    };
    let item = state
        .@snake@
        .call(&ctx, Retry::Never, request, |mut c, r| async move {
            c.create_item(r).await
        })
        .await?;
    Ok((StatusCode::CREATED, Json(item.into())))
}

#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "@name@-web", description = "REST gateway of the @name@ service"),
    paths(list, item, create),
    components(schemas(ItemView, ItemList, NewItem, ErrorBody))
)]
pub struct ApiDoc;

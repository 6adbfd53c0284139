//! What every route shares: resources that answer a wrong method with a 405 naming the right
//! ones, and the 404 of no route.

use actix_web::{HttpRequest, HttpResponse, web};

use crate::error::ApiError;

/// A route's resource, answering any method it has no route for with a 405 whose `Allow`
/// header is `allow`: the resource's methods, HEAD included for every GET route (served by
/// `guard::head_as_get`). The API's and the dashboard's routes are all made with this.
pub(crate) fn resource(path: &str, allow: &'static str) -> actix_web::Resource {
    web::resource(path.to_owned()).default_service(web::to(move |req| method_not_allowed(req, allow)))
}

pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound { method: req.method().to_string(), path: req.path().to_owned() })
}

async fn method_not_allowed(req: HttpRequest, allow: &'static str) -> HttpResponse {
    let error = ApiError::MethodNotAllowed { method: req.method().to_string(), path: req.path().to_owned() };
    let mut response = actix_web::ResponseError::error_response(&error);
    let (name, value) = crate::guard::allow_header(allow);
    response.headers_mut().insert(name, value);
    response
}

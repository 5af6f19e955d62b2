//! HTTP/1.1 requests and responses as the API uses them (being written: the parser and the
//! serializer go here; the types below are the interface the routes and the server share).

/// The request methods the API knows; anything else is kept by name so that it can be refused
/// with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// `GET`
    Get,
    /// `PUT`
    Put,
    /// `PATCH`
    Patch,
    /// Any other method, as sent.
    Other(String),
}

/// One complete request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The path, without a query string (e.g. `/drives/rootfs`).
    pub path: String,
    /// The body (empty when there is none).
    pub body: Vec<u8>,
}

/// One response: a status code and an optional JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code (200, 204, 400, ...).
    pub status: u16,
    /// The JSON body, if any.
    pub body: Option<String>,
}

//! The one error a call can end with: a gRPC status (code and message), whether the server
//! sent it or the transport failed on our side. Display matches what etcd's Go client
//! prints, so reports of ringbench and etcd's benchmark read the same.

use std::fmt;

use crate::api::errors::Code;

/// A failed call: the gRPC code and the (percent-decoded) `grpc-message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub code: Code,
    pub message: String,
}

impl Error {
    pub fn new(code: Code, message: impl Into<String>) -> Error {
        Error { code, message: message.into() }
    }

    /// The transport failed (connect, HTTP/2, or a malformed reply): grpc-go reports such
    /// failures as Unavailable or Internal.
    pub fn unavailable(message: impl Into<String>) -> Error {
        Error::new(Code::Unavailable, message)
    }

    pub fn internal(message: impl Into<String>) -> Error {
        Error::new(Code::Internal, message)
    }

    /// True for etcd's own errors (`etcdserver: ...`, `mvcc: ...`), which etcd's client
    /// prints bare; every other status prints in grpc-go's `rpc error:` form.
    fn is_etcd_error(&self) -> bool {
        self.message.starts_with("etcdserver: ") || self.message.starts_with("mvcc: ")
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_etcd_error() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "rpc error: code = {:?} desc = {}", self.code, self.message)
        }
    }
}

impl std::error::Error for Error {}

/// A failed call as a status to answer with (a member passing on what its leader answered).
impl From<Error> for crate::api::errors::Status {
    fn from(error: Error) -> crate::api::errors::Status {
        crate::api::errors::Status::with_message(error.code, error.message)
    }
}

/// grpc-go's codes by number (`grpc-status`); numbers outside the table are Unknown.
pub fn code_from_number(number: u32) -> Code {
    const CODES: [Code; 17] = [
        Code::Ok,
        Code::Canceled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];
    CODES.get(number as usize).copied().unwrap_or(Code::Unknown)
}

/// Undoes grpc-message's percent-encoding (`%XX` for bytes outside printable ASCII).
pub fn percent_decode(encoded: &str) -> String {
    let bytes = encoded.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex = bytes.get(index + 1..index + 3).and_then(|pair| std::str::from_utf8(pair).ok());
        match (bytes[index], hex.and_then(|pair| u8::from_str_radix(pair, 16).ok())) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                index += 3;
            }
            (byte, _) => {
                decoded.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_by_number() {
        assert_eq!(code_from_number(0), Code::Ok);
        assert_eq!(code_from_number(11), Code::OutOfRange);
        assert_eq!(code_from_number(16), Code::Unauthenticated);
        assert_eq!(code_from_number(99), Code::Unknown);
    }

    #[test]
    fn messages_print_as_etcds_client_prints_them() {
        let compacted = Error::new(Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted");
        assert_eq!(compacted.to_string(), "etcdserver: mvcc: required revision has been compacted");
        let unknown = Error::new(Code::Unimplemented, "unknown service foo");
        assert_eq!(unknown.to_string(), "rpc error: code = Unimplemented desc = unknown service foo");
    }

    #[test]
    fn percent_decoding_inverts_the_servers_encoding() {
        assert_eq!(percent_decode("100%25%0A"), "100%\n");
        assert_eq!(percent_decode("plain"), "plain");
        assert_eq!(percent_decode("bad%zz"), "bad%zz");
    }
}

//! `--auth gateway`: every call is checked by the gateway's `GatewayAuth.Check`, exactly as
//! Monoskope's CommandHandler and QueryHandler do: the raw token, the full method name and, for
//! unary calls, the protobuf-JSON of the request. The gateway's policy decides; its tags are the
//! caller's identity.

use std::time::Duration;

use monoskope_backup_api::backup::v1 as pb;
use monoskope_backup_api::gateway::{gateway_auth_client::GatewayAuthClient, CheckRequest};
use prost::Message;
use serde_json::{json, Map, Value};
use tonic::transport::Channel;
use tonic::Code;

use super::{AuthError, Identity};

/// How long a Check may take before the call fails with UNAVAILABLE.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// A client of the gateway's `GatewayAuth` service.
#[derive(Debug, Clone)]
pub struct Gateway {
    address: String,
    client: GatewayAuthClient<Channel>,
}

impl Gateway {
    /// A lazily connected client for `address` (`HOST:PORT`, or an `http(s)://` URL).
    pub fn new(address: &str) -> anyhow::Result<Self> {
        let url = if address.contains("://") {
            address.to_string()
        } else {
            format!("http://{address}")
        };
        let mut ep = tonic::transport::Endpoint::from_shared(url.clone())
            .map_err(|e| anyhow::anyhow!("--gateway {address:?}: {e}"))?
            .connect_timeout(CHECK_TIMEOUT)
            .timeout(CHECK_TIMEOUT);
        if url.starts_with("https://") {
            ep = ep.tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots())?;
        }
        Ok(Self {
            address: address.to_string(),
            client: GatewayAuthClient::new(ep.connect_lazy()),
        })
    }

    /// Asks the gateway whether `token` may call `method` with `request` (protobuf-JSON).
    pub async fn check(
        &self,
        method: &str,
        token: &str,
        request: Vec<u8>,
    ) -> Result<Identity, AuthError> {
        let mut c = self.client.clone();
        let res = c
            .check(CheckRequest {
                full_method_name: method.to_string(),
                access_token: token.to_string(),
                request,
            })
            .await;
        match res {
            Ok(r) => {
                let mut id = Identity::default();
                for t in r.into_inner().tags {
                    match t.key.as_str() {
                        "x-auth-id" => id.id = t.value,
                        "x-auth-name" => id.name = t.value,
                        "x-auth-email" => id.email = t.value,
                        _ => {}
                    }
                }
                if id.id.is_empty() {
                    return Err(AuthError::Unauthenticated(
                        "gateway auth failed: the gateway returned no x-auth-id".into(),
                    ));
                }
                Ok(id)
            }
            Err(s) => Err(match s.code() {
                Code::PermissionDenied => {
                    AuthError::PermissionDenied(format!("gateway: {}: {GATEWAY_RULE}", s.message()))
                }
                Code::Unauthenticated | Code::InvalidArgument => {
                    AuthError::Unauthenticated(format!("gateway auth failed: {}", s.message()))
                }
                _ => AuthError::Unavailable(format!(
                    "the gateway at {} cannot check the token: {}",
                    self.address,
                    monoskope_backup_client::status_line(&s)
                )),
            }),
        }
    }
}

/// What Monoskope's gateway requires of a caller outside its short list of allowed paths, said
/// when it refuses one (docs/MONOSKOPE.md §5; the how-to is in the README).
pub const GATEWAY_RULE: &str = "Monoskope's gateway lets a token call the BackupService only when the token was issued for the user id (a UUID, not a name) of a user with the role admin in the scope system (monoctl create rolebinding EMAIL --role admin --scope system, then monoctl create api-token -u USER_ID -s API), or when the gateway's policy grants one of the token's scopes this path";

fn ts(t: &prost_types::Timestamp) -> Value {
    match chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32) {
        Some(d) => Value::String(d.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
        None => Value::Null,
    }
}

/// The protobuf-JSON (proto3 canonical mapping: lowerCamelCase names, default values left out)
/// of a BackupService request, from its encoded message. Unknown methods and undecodable bodies
/// give an empty document, which the gateway treats as no request.
pub fn request_json(method: &str, message: &[u8]) -> Vec<u8> {
    let mut m = Map::new();
    let mut put = |k: &str, v: Value, default: bool| {
        if !default {
            m.insert(k.into(), v);
        }
    };
    let name = method.rsplit('/').next().unwrap_or_default();
    match name {
        "CreateBackup" => {
            let Ok(r) = pb::CreateBackupRequest::decode(message) else {
                return Vec::new();
            };
            put("wait", json!(r.wait), !r.wait);
            put("incremental", json!(r.incremental), !r.incremental);
        }
        "ListBackups" => {
            let Ok(r) = pb::ListBackupsRequest::decode(message) else {
                return Vec::new();
            };
            put("pageSize", json!(r.page_size), r.page_size == 0);
            put("pageToken", json!(r.page_token), r.page_token.is_empty());
            put(
                "includeIncomplete",
                json!(r.include_incomplete),
                !r.include_incomplete,
            );
        }
        "Restore" => {
            let Ok(r) = pb::RestoreRequest::decode(message) else {
                return Vec::new();
            };
            put("backupId", json!(r.backup_id), r.backup_id.is_empty());
            if let Some(u) = &r.until {
                put("until", ts(u), false);
            }
            put("dropExisting", json!(r.drop_existing), !r.drop_existing);
            put("viaApi", json!(r.via_api), !r.via_api);
            put("wait", json!(r.wait), !r.wait);
        }
        "Drill" => {
            let Ok(r) = pb::DrillRequest::decode(message) else {
                return Vec::new();
            };
            put("backupId", json!(r.backup_id), r.backup_id.is_empty());
        }
        "GetStatus" => {}
        _ => return Vec::new(),
    }
    serde_json::to_vec(&Value::Object(m)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_json_is_protobuf_json() {
        let r = pb::RestoreRequest {
            backup_id: "latest".into(),
            until: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            drop_existing: true,
            via_api: false,
            wait: true,
            dry_run: false,
        };
        let j = request_json(
            "/monoskope.backup.v1.BackupService/Restore",
            &r.encode_to_vec(),
        );
        let v: Value = serde_json::from_slice(&j).expect("json");
        assert_eq!(
            v,
            json!({"backupId":"latest","until":"2023-11-14T22:13:20Z","dropExisting":true,"wait":true})
        );
        let j = request_json("/monoskope.backup.v1.BackupService/GetStatus", &[]);
        assert_eq!(j, b"{}");
        assert!(request_json("/x.Y/Z", &[]).is_empty());
    }
}

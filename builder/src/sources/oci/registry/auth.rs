//! Credentials for a registry, from the file `$REGISTRY_AUTH_FILE` names (podman's and
//! skopeo's convention) or else Docker's `config.json` (`$DOCKER_CONFIG`, `~/.docker`),
//! credential helpers included. No entry means an anonymous pull; the token flows themselves
//! (a bearer token from the registry's realm, or basic auth) are the client's.

use std::path::{Path, PathBuf};

use docker_credential::{CredentialRetrievalError, DockerCredential};
use oci_client::secrets::RegistryAuth;

use super::RegistryError;

/// The names a registry's credentials may be stored under.
fn keys(registry: &str) -> Vec<String> {
    match registry {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => vec![
            "https://index.docker.io/v1/".into(),
            "docker.io".into(),
            "index.docker.io".into(),
        ],
        r => vec![r.to_string(), format!("https://{r}"), format!("http://{r}")],
    }
}

/// The credentials file: `auth_file`, else `$REGISTRY_AUTH_FILE`, else Docker's.
fn config_path(auth_file: Option<&Path>) -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    auth_file
        .map(Path::to_path_buf)
        .or_else(|| env("REGISTRY_AUTH_FILE"))
        .or_else(|| env("DOCKER_CONFIG").map(|d| d.join("config.json")))
        .or_else(|| env("HOME").map(|h| h.join(".docker/config.json")))
}

/// The credentials configured for `registry` (as written in the reference, `HOST[:PORT]`);
/// anonymous when no file or no entry names it.
pub fn for_registry(
    registry: &str,
    auth_file: Option<&Path>,
) -> Result<RegistryAuth, RegistryError> {
    let Some(path) = config_path(auth_file) else {
        return Ok(RegistryAuth::Anonymous);
    };
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && auth_file.is_none() => {
            return Ok(RegistryAuth::Anonymous)
        }
        Err(source) => return Err(RegistryError::Io { path, source }),
    };
    for key in keys(registry) {
        match docker_credential::get_credential_from_reader(&bytes[..], &key) {
            Ok(DockerCredential::UsernamePassword(u, p)) => return Ok(RegistryAuth::Basic(u, p)),
            Ok(DockerCredential::IdentityToken(t)) => return Ok(RegistryAuth::Bearer(t)),
            Err(CredentialRetrievalError::NoCredentialConfigured) => continue,
            Err(e) => {
                return Err(RegistryError::Credentials {
                    registry: format!("{registry} (in {})", path.display()),
                    reason: e.to_string(),
                })
            }
        }
    }
    Ok(RegistryAuth::Anonymous)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cover_docker_hub_spellings() {
        assert!(keys("docker.io").contains(&"https://index.docker.io/v1/".to_string()));
        assert_eq!(keys("127.0.0.1:5000")[0], "127.0.0.1:5000");
    }
}

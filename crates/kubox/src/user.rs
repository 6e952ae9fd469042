//! `kubox user`: users of the cluster, who are not API objects but
//! holders of client certificates the cluster CA signed (the user is the
//! certificate's CN, the groups its O), as the seeds' `new_user.sh` made
//! them with openssl. `add` does all of that script: the user's namespace,
//! a RoleBinding there, a quota with default container limits, and the
//! kubeconfig; `delete` undoes it, as `del_user.sh`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use k8s_openapi::api::core::v1::{
    LimitRange, LimitRangeItem, LimitRangeSpec, Namespace, ResourceQuota, ResourceQuotaSpec,
};
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Resource};
use kubox_apiserver::pki;

/// Marks what `kubox user add` made for a user, so `delete` finds it all.
const USER_LABEL: &str = "kubox.io/user";

#[derive(Args)]
pub struct UserArgs {
    #[command(subcommand)]
    command: UserCommand,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Issue a client certificate for a user and write a kubeconfig with it.
    Create(CreateArgs),
    /// Give a user a namespace of their own: the namespace, a RoleBinding
    /// there, optionally a ResourceQuota and LimitRange, and a kubeconfig
    /// whose context works in that namespace.
    Add(AddArgs),
    /// Remove a user's namespace with everything in it, and their bindings.
    Delete(DeleteArgs),
}

/// The ClusterRoles a user can be given in their namespace.
#[derive(Clone, Copy, ValueEnum)]
enum Role {
    View,
    Edit,
    Admin,
}

impl Role {
    fn cluster_role(self) -> &'static str {
        match self {
            Role::View => "view",
            Role::Edit => "edit",
            Role::Admin => "admin",
        }
    }
}

#[derive(Args)]
struct AddArgs {
    #[command(flatten)]
    user: CreateArgs,
    /// The user's namespace; `ns-NAME`, as the seeds' script names it, if not given.
    #[arg(long)]
    namespace: Option<String>,
    /// What the user may do in their namespace.
    #[arg(long, value_enum, default_value = "edit")]
    role: Role,
    /// ResourceQuota limits, `resource=quantity` separated by commas, as
    /// `kubectl create quota --hard` takes them: `cpu=2,memory=4Gi,pods=10`.
    #[arg(long, value_name = "LIMITS")]
    quota: Option<String>,
}

#[derive(Args)]
struct DeleteArgs {
    name: String,
    /// The server's data directory, holding the admin kubeconfig.
    #[arg(long, default_value = "/var/lib/kubox")]
    data_dir: PathBuf,
}

#[derive(Args)]
struct CreateArgs {
    /// The user name (the certificate's CN), as RoleBindings name it.
    name: String,
    /// The user's group (the certificate's O). One only: the certificate
    /// library kubox signs with keeps one value per name attribute.
    #[arg(long)]
    group: Option<String>,
    /// The server's data directory, holding the cluster CA.
    #[arg(long, default_value = "/var/lib/kubox")]
    data_dir: PathBuf,
    /// Where to write the kubeconfig; standard output if not given.
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
}

pub fn run(args: UserArgs) -> anyhow::Result<()> {
    match args.command {
        UserCommand::Create(args) => create(args, None),
        UserCommand::Add(args) => tokio::runtime::Runtime::new()?.block_on(add(args)),
        UserCommand::Delete(args) => tokio::runtime::Runtime::new()?.block_on(delete(args)),
    }
}

fn admin_kubeconfig(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.kubeconfig")
}

async fn admin_client(data_dir: &Path) -> anyhow::Result<kube::Client> {
    let path = admin_kubeconfig(data_dir);
    let (client, _) = kubox_client::connect(&path).await.with_context(|| {
        format!(
            "connecting with {} (has the server started?)",
            path.display()
        )
    })?;
    Ok(client)
}

fn owned_by(user: &str, name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some(BTreeMap::from([(USER_LABEL.to_owned(), user.to_owned())])),
        ..Default::default()
    }
}

/// Creates `object`; one left by an earlier `add` is kept as it is.
async fn create_once<K>(api: &Api<K>, object: &K) -> anyhow::Result<()>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    match api.create(&PostParams::default(), object).await {
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        r => {
            r.with_context(|| format!("creating the {}", K::kind(&())))?;
            Ok(())
        }
    }
}

fn parse_quota(text: &str) -> anyhow::Result<BTreeMap<String, Quantity>> {
    text.split(',')
        .filter(|item| !item.is_empty())
        .map(|item| {
            let (resource, amount) = item
                .split_once('=')
                .with_context(|| format!("--quota {item:?}: want resource=quantity"))?;
            Ok((
                resource.trim().to_owned(),
                Quantity(amount.trim().to_owned()),
            ))
        })
        .collect()
}

/// Containers that name no resources get these, so a quota on cpu or
/// memory does not refuse them outright.
fn default_limits(user: &str, namespace: &str) -> LimitRange {
    let amounts = |cpu: &str, memory: &str| {
        Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.to_owned())),
            ("memory".to_owned(), Quantity(memory.to_owned())),
        ]))
    };
    LimitRange {
        metadata: owned_by(user, &format!("limits-{user}"), Some(namespace)),
        spec: Some(LimitRangeSpec {
            limits: vec![LimitRangeItem {
                type_: "Container".to_owned(),
                default_request: amounts("100m", "128Mi"),
                default: amounts("500m", "512Mi"),
                ..Default::default()
            }],
        }),
    }
}

async fn add(args: AddArgs) -> anyhow::Result<()> {
    let user = args.user.name.clone();
    check_name(&user)?;
    let namespace = args.namespace.unwrap_or_else(|| format!("ns-{user}"));
    let hard = args.quota.as_deref().map(parse_quota).transpose()?;
    let client = admin_client(&args.user.data_dir).await?;
    create_once(
        &Api::<Namespace>::all(client.clone()),
        &Namespace {
            metadata: owned_by(&user, &namespace, None),
            ..Default::default()
        },
    )
    .await?;
    create_once(
        &Api::<RoleBinding>::namespaced(client.clone(), &namespace),
        &RoleBinding {
            metadata: owned_by(
                &user,
                &format!("{user}-{}", args.role.cluster_role()),
                Some(&namespace),
            ),
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".to_owned()),
                kind: "ClusterRole".to_owned(),
                name: args.role.cluster_role().to_owned(),
            },
            subjects: Some(vec![Subject {
                api_group: Some("rbac.authorization.k8s.io".to_owned()),
                kind: "User".to_owned(),
                name: user.clone(),
                namespace: None,
            }]),
        },
    )
    .await?;
    if let Some(hard) = hard {
        let compute = hard.keys().any(|k| {
            ["cpu", "memory"]
                .iter()
                .any(|r| k == r || k.ends_with(&format!(".{r}")))
        });
        create_once(
            &Api::<ResourceQuota>::namespaced(client.clone(), &namespace),
            &ResourceQuota {
                metadata: owned_by(&user, &format!("quota-{user}"), Some(&namespace)),
                spec: Some(ResourceQuotaSpec {
                    hard: Some(hard),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await?;
        if compute {
            create_once(
                &Api::<LimitRange>::namespaced(client, &namespace),
                &default_limits(&user, &namespace),
            )
            .await?;
        }
    }
    eprintln!(
        "user {user:?}: namespace {namespace}, role {}",
        args.role.cluster_role()
    );
    create(args.user, Some(&namespace))
}

async fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    check_name(&args.name)?;
    let client = admin_client(&args.data_dir).await?;
    let selector = ListParams::default().labels(&format!("{USER_LABEL}={}", args.name));
    let namespaces = Api::<Namespace>::all(client.clone());
    let found = namespaces.list(&selector).await?;
    if found.items.is_empty() {
        anyhow::bail!("no namespace belongs to user {:?}", args.name);
    }
    // The namespace's deletion takes its RoleBindings, quota and every
    // object the user made; with no binding left the user may do nothing.
    for ns in found {
        let name = ns.metadata.name.unwrap_or_default();
        namespaces.delete(&name, &DeleteParams::default()).await?;
        eprintln!("user {:?}: namespace {name} deleted", args.name);
    }
    Ok(())
}

fn check_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty() || name.starts_with("system:") {
        anyhow::bail!("user name {name:?} is empty or reserved (system:)");
    }
    Ok(())
}

fn create(args: CreateArgs, namespace: Option<&str>) -> anyhow::Result<()> {
    check_name(&args.name)?;
    let admin = admin_kubeconfig(&args.data_dir);
    let admin = kube::config::Kubeconfig::read_from(&admin)
        .with_context(|| format!("reading {} (has the server started?)", admin.display()))?;
    let server = admin
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.server.clone())
        .context("the admin kubeconfig names no server")?;
    let ca =
        pki::Pki::load_or_create(&args.data_dir.join("pki")).context("loading the cluster CA")?;
    let groups: Vec<&str> = args.group.iter().map(String::as_str).collect();
    let creds = ca.issue_client(&args.name, &groups)?;
    let mut contents = pki::kubeconfig("kubox", &server, ca.ca_pem(), &args.name, &creds);
    if let Some(namespace) = namespace {
        let mut config: kube::config::Kubeconfig = serde_yaml_ng::from_str(&contents)?;
        for context in &mut config.contexts {
            if let Some(context) = &mut context.context {
                context.namespace = Some(namespace.to_owned());
            }
        }
        contents = serde_yaml_ng::to_string(&config)?;
    }
    match args.output {
        Some(path) => {
            pki::write_file(&path, contents.as_bytes(), true)?;
            eprintln!(
                "user {:?} (groups {:?}): kubeconfig written to {} (context {}@kubox)",
                args.name,
                groups,
                path.display(),
                args.name
            );
        }
        None => print!("{contents}"),
    }
    Ok(())
}

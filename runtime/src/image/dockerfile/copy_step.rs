//! `COPY` and `ADD` steps of a Dockerfile build: sources from the build context (globs,
//! `.dockerignore`, heredocs) or from a stage or image (`--from`), `--chown`, `--chmod`,
//! local archives unpacked by `ADD`, Docker's destination rules. The key holds the content
//! hash of what is copied, from the context or from a stage (owners included).

use std::fs;
use std::path::PathBuf;

use sha2::{Digest as _, Sha256};

use super::super::context_digests::hash_entry;
use super::super::copy_keys;
use super::super::error::ImageError;
use super::super::layer_writer::WhiteoutMode;
use super::build::Run;
use super::config::{chain, StageState};
use super::context;
use super::copy::{self, Attrs, Below, Item};
use super::error::{DockerfileError, Located};
use super::parse::{Args, Instruction};
use super::plan::flag_value;
use super::remote;
use super::words;

impl Run<'_> {
    pub(super) fn copy_step(
        &mut self,
        st: &mut StageState,
        ins: &Instruction,
        label: &str,
    ) -> Result<(), DockerfileError> {
        let escape = self.plan.escape;
        let is_add = ins.keyword == "ADD";
        let lookup = |n: &str| st.lookup(n);
        let mut from = None;
        let mut chown = None;
        let mut chmod = None;
        let mut checksum = None;
        for f in &ins.flags {
            let v = flag_value(f, escape, &lookup).map_err(|l| self.err(l))?;
            match f.name.as_str() {
                "from" => from = Some((v, f.pos)),
                "chown" => chown = Some((v, f.pos)),
                "chmod" => {
                    chmod = Some(
                        u32::from_str_radix(&v, 8)
                            .ok()
                            .filter(|m| *m <= 0o7777)
                            .ok_or_else(|| {
                                self.err(Located::new(
                                    f.pos,
                                    format!("--chmod={v} is not an octal mode"),
                                    "write e.g. --chmod=755 (symbolic modes are not supported)",
                                ))
                            })?,
                    )
                }
                "checksum" => checksum = Some(v),
                _ => {} // --link: layers are independent of their parents anyway
            }
        }
        let mut parts: Vec<String> = match &ins.args {
            Args::Exec(v) => v
                .iter()
                .map(|w| words::word(w, escape, &lookup))
                .collect::<Result<_, _>>(),
            Args::Shell(s) => words::words(s, escape, &lookup),
        }
        .map_err(|e| self.err(Located::new(ins.args_pos, e, "fix the quoting")))?;
        // Heredoc sources (`COPY <<EOF /dest`) are files of their own.
        let heredoc_names: Vec<String> = ins
            .heredocs
            .iter()
            .map(|d| format!("<<{}", d.name))
            .collect();
        if parts.len() < 2 {
            return Err(self.err(Located::new(
                ins.args_pos,
                format!("{} needs a source and a destination", ins.keyword),
                format!("write {} SRC... DEST", ins.keyword),
            )));
        }
        let dest_raw = parts.pop().expect("two or more");
        let dest_dir_hint = dest_raw.ends_with('/');
        let dest = if dest_raw.starts_with('/') {
            dest_raw.clone()
        } else {
            format!("{}/{dest_raw}", st.workdir().trim_end_matches('/'))
        };
        let owner = match &chown {
            Some((spec, pos)) => {
                Some(copy::owner_ids(spec, &self.layer_paths(st)).map_err(|e| {
                    self.err(Located::new(
                        *pos,
                        e,
                        "add the user to the image first (RUN useradd …) or give numeric ids",
                    ))
                })?)
            }
            None => None,
        };
        // Sources: (absolute path on the host, what it is named by, is a folder).
        let mut items_src: Vec<(PathBuf, String, bool)> = Vec::new();
        let mut key_parts: Vec<Vec<u8>> = vec![
            ins.keyword.as_bytes().to_vec(),
            dest.as_bytes().to_vec(),
            format!("{owner:?} {chmod:?} {dest_dir_hint}").into_bytes(),
        ];
        // Remote files of ADD (URL, sha256 hex): fetched only when the step runs.
        let mut remotes: Vec<(String, String)> = Vec::new();
        let heredoc_dir = self
            .store
            .home
            .staging_dir("heredoc")
            .map_err(ImageError::from)?;
        match &from {
            Some((name, pos)) => {
                let (root_layers, _) = self.copy_source(name, *pos)?;
                key_parts.extend(parts.iter().map(|p| p.as_bytes().to_vec()));
                let items =
                    self.items_from_layers(&root_layers, &parts, name, &dest, dest_dir_hint, ins)?;
                // Keyed by what is copied (as BuildKit): a source stage that ran again
                // and made the same files reruns nothing here.
                let content =
                    copied_content_key(&self.store.home, &root_layers, &items).map_err(|e| {
                        ImageError::Build {
                            step: label.to_string(),
                            detail: format!("cannot read what is copied: {e}"),
                        }
                    })?;
                key_parts.push(format!("content\0{content}").into_bytes());
                let key = chain(
                    &st.key,
                    &key_parts.iter().map(Vec::as_slice).collect::<Vec<_>>(),
                );
                let attrs = Attrs {
                    owner,
                    keep_owner: true,
                    chmod,
                };
                return self.layer_step(
                    st,
                    label,
                    key,
                    WhiteoutMode::Plain,
                    &mut |upper, lowers| {
                        copy::write_items(upper, &items, attrs, &Below { layers: lowers }).map_err(
                            |e| {
                                ImageError::Build {
                                    step: label.to_string(),
                                    detail: format!("cannot copy: {e}"),
                                }
                                .into()
                            },
                        )
                    },
                );
            }
            None => {
                for p in &parts {
                    if let Some(i) = heredoc_names.iter().position(|n| n == p) {
                        let doc = &ins.heredocs[i];
                        let path = heredoc_dir.path().join(&doc.name);
                        let body = if doc.expand {
                            words::expand_only(&doc.body, &lookup).map_err(|e| {
                                self.err(Located::new(
                                    ins.args_pos,
                                    e,
                                    "fix the variable in the heredoc",
                                ))
                            })?
                        } else {
                            doc.body.clone()
                        };
                        fs::write(&path, &body).map_err(ImageError::io(&path))?;
                        key_parts.push(body.into_bytes());
                        items_src.push((path, doc.name.clone(), false));
                        continue;
                    }
                    if p.contains("://") || p.starts_with("git@") {
                        let (Some(sum), true) = (&checksum, is_add) else {
                            return Err(self.err(Located::new(
                                ins.args_pos,
                                format!("`{p}` is a remote URL, and {} without a checksum is refused", ins.keyword),
                                "use ADD --checksum=sha256:<hex> URL DEST (the file must have that checksum), or fetch it in a RUN step",
                            )));
                        };
                        let sha = remote::parse_checksum(sum).map_err(|e| {
                            self.err(Located::new(
                                ins.args_pos,
                                e,
                                "give --checksum=sha256:<64 hex digits>",
                            ))
                        })?;
                        key_parts.push(format!("{p}\0{sha}").into_bytes());
                        remotes.push((p.clone(), sha));
                        continue;
                    }
                    let matched = context::match_sources(&self.build.context, p, &self.ignore)
                        .map_err(|e| {
                            self.err(Located::new(
                                ins.args_pos,
                                e,
                                "check the path relative to the build context (and .dockerignore)",
                            ))
                        })?;
                    for m in matched {
                        items_src.push((
                            context::inside(&self.build.context, &m.rel),
                            m.rel,
                            m.is_dir,
                        ));
                    }
                }
            }
        }
        // Context (and heredoc) sources: content hash and the list of copies.
        let multi = items_src.len() + remotes.len() > 1;
        if multi && !dest_dir_hint {
            return Err(self.err(Located::new(
                ins.args_pos,
                format!(
                    "{} of several sources needs a destination folder ending in `/`",
                    ins.keyword
                ),
                format!("write `{dest_raw}/`"),
            )));
        }
        let mut h = Sha256::new();
        let mut items = Vec::new();
        let mut archives = Vec::new();
        for (abs, rel, is_dir) in &items_src {
            let is_heredoc = !abs.starts_with(&self.build.context);
            if *is_dir {
                for r in context::walk(&self.build.context, rel, &self.ignore)
                    .map_err(ImageError::io(abs))?
                {
                    let from_path = context::inside(&self.build.context, &r);
                    hash_entry(&mut h, &r, &from_path, Some(self.digests))
                        .map_err(ImageError::io(&from_path))?;
                    let sub = r
                        .strip_prefix(rel.as_str())
                        .unwrap_or(&r)
                        .trim_start_matches('/');
                    let to = if sub.is_empty() {
                        dest.clone()
                    } else {
                        format!("{}/{sub}", dest.trim_end_matches('/'))
                    };
                    items.push(Item {
                        from: from_path,
                        to,
                    });
                }
                continue;
            }
            hash_entry(&mut h, rel, abs, Some(self.digests)).map_err(ImageError::io(abs))?;
            let to = if multi || dest_dir_hint {
                format!("{}/{}", dest.trim_end_matches('/'), base_name(rel))
            } else {
                dest.clone()
            };
            if is_add && !is_heredoc {
                if let Some(kind) = copy::archive_kind(abs).map_err(ImageError::io(abs))? {
                    archives.push((abs.clone(), kind, dest.clone()));
                    continue;
                }
            }
            items.push(Item {
                from: abs.clone(),
                to,
            });
        }
        key_parts.push(h.finalize().to_vec());
        let key = chain(
            &st.key,
            &key_parts.iter().map(Vec::as_slice).collect::<Vec<_>>(),
        );
        let attrs = Attrs {
            owner,
            keep_owner: false,
            chmod,
        };
        let heredoc_path = heredoc_dir.path().to_path_buf();
        let result = self.layer_step(st, label, key, WhiteoutMode::Plain, &mut |upper, lowers| {
            let below = Below { layers: lowers };
            let mut items = items.clone();
            for (url, sha) in &remotes {
                let name = remote::file_name(url);
                let file = heredoc_path.join(format!("remote-{sha}"));
                remote::fetch(url, sha, &file).map_err(|e| ImageError::Build {
                    step: label.to_string(),
                    detail: e,
                })?;
                // Downloaded files are 0600, as in Docker.
                fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                    .map_err(ImageError::io(&file))?;
                let to = if multi || dest_dir_hint {
                    format!("{}/{name}", dest.trim_end_matches('/'))
                } else {
                    dest.clone()
                };
                items.push(Item { from: file, to });
            }
            copy::write_items(upper, &items, attrs, &below).map_err(|e| ImageError::Build {
                step: label.to_string(),
                detail: format!("cannot copy: {e}"),
            })?;
            for (path, kind, to) in &archives {
                copy::unpack_archive(upper, path, *kind, to, &below).map_err(|e| {
                    ImageError::Build {
                        step: label.to_string(),
                        detail: format!("cannot unpack {}: {e}", path.display()),
                    }
                })?;
            }
            Ok(())
        });
        drop(heredoc_dir);
        result
    }

    /// What `COPY --from` copies: each pattern matched in the merged view of `layers`; a
    /// folder's content goes into `dest`, files into `dest/` or onto `dest`.
    pub(super) fn items_from_layers(
        &self,
        layers: &[PathBuf],
        patterns: &[String],
        name: &str,
        dest: &str,
        dest_dir_hint: bool,
        ins: &Instruction,
    ) -> Result<Vec<Item>, DockerfileError> {
        let view = super::super::export::merged_view(layers).map_err(|e| ImageError::Build {
            step: format!("COPY --from={name}"),
            detail: format!("cannot read the source: {e}"),
        })?;
        let mut matches: Vec<(PathBuf, bool)> = Vec::new();
        for p in patterns {
            let segs: Vec<String> = p
                .split('/')
                .filter(|s| !s.is_empty() && *s != ".")
                .map(String::from)
                .collect();
            if segs.is_empty() {
                matches.push((PathBuf::new(), true));
                continue;
            }
            let before = matches.len();
            for (rel, &i) in &view {
                let comps: Vec<&str> = rel.iter().map(|c| c.to_str().unwrap_or("")).collect();
                if context::path_match(&segs, &comps) {
                    let is_dir =
                        fs::symlink_metadata(layers[i].join(rel)).is_ok_and(|m| m.is_dir());
                    matches.push((rel.clone(), is_dir));
                }
            }
            if matches.len() == before {
                return Err(self.err(Located::new(
                    ins.args_pos,
                    format!("`{p}` does not exist in `{name}`"),
                    "check the path in the stage or image you copy from",
                )));
            }
        }
        let multi = matches.len() > 1;
        if multi && !dest_dir_hint {
            return Err(self.err(Located::new(
                ins.args_pos,
                "COPY of several sources needs a destination folder ending in `/`",
                format!("write `{dest}/`"),
            )));
        }
        let mut items = Vec::new();
        for (rel, is_dir) in &matches {
            if *is_dir {
                for (k, &i) in view
                    .range(rel.clone()..)
                    .take_while(|(k, _)| k.starts_with(rel))
                {
                    let sub = k.strip_prefix(rel).unwrap_or(k);
                    let to = if sub.as_os_str().is_empty() {
                        dest.to_string()
                    } else {
                        format!("{}/{}", dest.trim_end_matches('/'), sub.display())
                    };
                    items.push(Item {
                        from: layers[i].join(k),
                        to,
                    });
                }
            } else {
                let to = if multi || dest_dir_hint {
                    format!(
                        "{}/{}",
                        dest.trim_end_matches('/'),
                        base_name(&rel.to_string_lossy())
                    )
                } else {
                    dest.to_string()
                };
                items.push(Item {
                    from: layers[view[rel]].join(rel),
                    to,
                });
            }
        }
        Ok(items)
    }

    /// The layers and key of what `COPY --from=name` copies from: a stage (by name or
    /// number) or an image.
    pub(super) fn copy_source(
        &mut self,
        name: &str,
        pos: super::error::Pos,
    ) -> Result<(Vec<PathBuf>, String), DockerfileError> {
        let stage = self
            .plan
            .stages
            .iter()
            .find(|s| s.name.as_deref() == Some(&name.to_ascii_lowercase()))
            .map(|s| s.index)
            .or_else(|| name.parse::<usize>().ok());
        if let Some(i) = stage {
            // The plan builds every stage a step names before it; only a name the plan
            // could not read (made of a stage's own variables) reaches here unbuilt.
            let Some(st) = self.done.get(&i) else {
                return Err(self.err(Located::new(
                    pos,
                    format!("stage `{name}` is not built before this step"),
                    "name the stage literally (or with a global ARG) so berth builds it first",
                )));
            };
            return Ok((self.layer_paths(st), st.key.clone()));
        }
        let st = self.base_image(name, pos)?;
        Ok((self.layer_paths(&st), st.key))
    }
}

/// The content key of `items` copied from `layers` (owners included: a `COPY --from` keeps
/// them), kept in the berth home ([`copy_keys`]).
pub(super) fn copied_content_key(
    home: &crate::state::BerthHome,
    layers: &[PathBuf],
    items: &[Item],
) -> std::io::Result<String> {
    let entries: Vec<(&std::path::Path, &str)> = items
        .iter()
        .map(|it| (it.from.as_path(), it.to.as_str()))
        .collect();
    copy_keys::content_key(home.root(), layers, &entries)
}

/// The last segment of a `/` path.
fn base_name(rel: &str) -> &str {
    rel.rsplit('/').find(|s| !s.is_empty()).unwrap_or(rel)
}

//! How the work commands report what they did, and the number and
//! duration formats people read everywhere.

/// How a command that does work (transfer, aggregate) reports what it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SummaryFormat {
    /// One line for people and cron mail
    Text,
    /// One JSON object
    Json,
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// A count and its noun as English has them: `1 hour`, `1,234 hours`,
/// `1 entry`, `0 entries`.
pub fn counted(n: u64, noun: &str) -> String {
    let number = thousands(n);
    if n == 1 {
        format!("{number} {noun}")
    } else if let Some(stem) = noun.strip_suffix('y')
        && !stem.ends_with(['a', 'e', 'o', 'u'])
    {
        format!("{number} {stem}ies")
    } else {
        format!("{number} {noun}s")
    }
}

impl SummaryFormat {
    /// Prints a work command's summary: `summary` as one JSON object, or
    /// `text` as one line.
    pub fn print(
        self,
        summary: &impl serde::Serialize,
        text: impl FnOnce() -> String,
    ) -> std::io::Result<()> {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        match self {
            SummaryFormat::Json => writeln!(out, "{}", serde_json::to_string(summary)?),
            SummaryFormat::Text => writeln!(out, "{}", text()),
        }
    }
}

/// A signed count with thousands separators.
pub fn thousands_signed(n: i64) -> String {
    if n < 0 {
        format!("-{}", thousands(n.unsigned_abs()))
    } else {
        thousands(n.unsigned_abs())
    }
}

/// A duration for people: `850 ms`, `41.2 s`, `12.5 min`, `1.2 h`.
pub fn duration(ms: f64) -> String {
    DurationUnit::of(ms).show(ms)
}

/// The unit a duration is shown in; a table's column keeps one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurationUnit {
    Ms,
    S,
    Min,
    H,
}

impl DurationUnit {
    /// The unit that suits `ms`.
    pub fn of(ms: f64) -> DurationUnit {
        match ms.abs() {
            ms if ms < 1_000.0 => DurationUnit::Ms,
            ms if ms < 60_000.0 => DurationUnit::S,
            ms if ms < 3_600_000.0 => DurationUnit::Min,
            _ => DurationUnit::H,
        }
    }

    /// The unit of a column whose largest value is `ms`: seconds up to ten
    /// minutes, so 400 ms beside 65 s reads `0.4 s`, not `0.0 min`.
    pub fn for_column(ms: f64) -> DurationUnit {
        match ms.abs() {
            ms if ms < 1_000.0 => DurationUnit::Ms,
            ms if ms < 600_000.0 => DurationUnit::S,
            ms if ms < 36_000_000.0 => DurationUnit::Min,
            _ => DurationUnit::H,
        }
    }

    pub fn show(self, ms: f64) -> String {
        match self {
            DurationUnit::Ms => format!("{ms:.0} ms"),
            DurationUnit::S => format!("{:.1} s", ms / 1_000.0),
            DurationUnit::Min => format!("{:.1} min", ms / 60_000.0),
            DurationUnit::H => format!("{:.1} h", ms / 3_600_000.0),
        }
    }
}

/// A horizontal bar `value / max` of the full `width`, in eighths.
pub fn bar(value: f64, max: f64, width: usize) -> String {
    const EIGHTHS: [char; 8] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];
    if max <= 0.0 || value <= 0.0 {
        return String::new();
    }
    let eighths = ((value / max).min(1.0) * (width * 8) as f64).round() as usize;
    let mut out = "█".repeat(eighths / 8);
    if !eighths.is_multiple_of(8) {
        out.push(EIGHTHS[eighths % 8]);
    }
    out
}

/// Writes a whole file or nothing: readers (a collector scraping every
/// few seconds, a web server) see the old file or the new one, never half
/// of one. A new file is readable by all (it holds no secret); an existing
/// one keeps its mode.
pub fn write_atomically(
    path: &std::path::Path,
    write: impl FnOnce(&mut dyn std::io::Write) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::os::unix::fs::PermissionsExt;
    let context = || format!("cannot write {}", path.display());
    let (target, existing) = trusted_target(path).with_context(context)?;
    // Anything but a regular file is refused rather than replaced by one
    // (`-o /dev/null` as root would otherwise delete the device).
    if existing.as_ref().is_some_and(|meta| !meta.is_file()) {
        anyhow::bail!("{}: it is not a regular file", context());
    }
    // Its permission bits (never set-user-ID and the like) and group stay.
    let mode = existing
        .as_ref()
        .map_or(0o644, |meta| meta.permissions().mode() & 0o777);
    let dir = match target.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => std::path::Path::new("."),
    };
    let mut file = tempfile::Builder::new()
        .prefix(".genalytics-")
        .tempfile_in(dir)
        .with_context(context)?;
    let mut buffered = std::io::BufWriter::new(file.as_file_mut());
    write(&mut buffered).with_context(context)?;
    std::io::Write::flush(&mut buffered).with_context(context)?;
    drop(buffered);
    if let Some(meta) = &existing {
        use std::os::unix::fs::MetadataExt;
        // Only root or a member of the group may; otherwise the file keeps
        // the caller's group, as any new file would.
        let _ = std::os::unix::fs::fchown(file.as_file(), None, Some(meta.gid()));
    }
    file.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(context)?;
    // On disk before it replaces the old file: a crash leaves one or the
    // other, never an empty file under the name.
    file.as_file().sync_all().with_context(context)?;
    // rename(2) replaces whatever is at the name then, a link included: a
    // link planted after the check is replaced, not followed.
    file.persist(&target)
        .map_err(|err| err.error)
        .with_context(context)?;
    Ok(())
}

/// The file `path` names and what is there (none yet, or not a link),
/// following symbolic links only when the caller or root owns them — as the kernel's `fs.protected_symlinks` judges a
/// link in a shared directory: another user's link could point anywhere
/// the caller may write.
fn trusted_target(
    path: &std::path::Path,
) -> anyhow::Result<(std::path::PathBuf, Option<std::fs::Metadata>)> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    let mut current = path.to_path_buf();
    // As the kernel's limit on links followed in one lookup.
    let foreign = |link: &std::path::Path, meta: &std::fs::Metadata| {
        anyhow::anyhow!(
            "{} is a symbolic link owned by another user (uid {}), which is not followed; \
             remove it or write elsewhere",
            link.display(),
            meta.uid()
        )
    };
    for _ in 0..40 {
        // The directories on the way count as much as the file itself.
        let mut prefix = std::path::PathBuf::new();
        for part in current
            .parent()
            .into_iter()
            .flat_map(std::path::Path::components)
        {
            prefix.push(part);
            if let Ok(meta) = std::fs::symlink_metadata(&prefix)
                && meta.file_type().is_symlink()
                && meta.uid() != me
                && meta.uid() != 0
            {
                return Err(foreign(&prefix, &meta));
            }
        }
        let meta = match std::fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => meta,
            // What is there now (or nothing), not followed again.
            found => return Ok((current, found.ok())),
        };
        if meta.uid() != me && meta.uid() != 0 {
            return Err(foreign(&current, &meta));
        }
        let link = std::fs::read_link(&current)?;
        current = match current.parent() {
            Some(dir) if link.is_relative() => dir.join(link),
            _ => link,
        };
    }
    anyhow::bail!("{}: too many levels of symbolic links", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_bars_for_people() {
        assert_eq!(duration(850.0), "850 ms");
        assert_eq!(duration(41_234.0), "41.2 s");
        assert_eq!(duration(750_000.0), "12.5 min");
        assert_eq!(duration(4_320_000.0), "1.2 h");
        assert_eq!(bar(5.0, 10.0, 4), "██");
        assert_eq!(bar(1.0, 8.0, 1), "▏");
        assert_eq!(bar(0.0, 8.0, 4), "");
        assert_eq!(thousands_signed(-1234), "-1,234");
    }

    #[test]
    fn groups_by_three() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}

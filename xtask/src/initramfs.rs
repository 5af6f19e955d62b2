//! The boot test's initramfs: an uncompressed `newc` cpio archive (the kernel unpacks a
//! compressed one far too slowly when its code is emulated) holding busybox and an /init
//! script that prints [`MARKER`] and reboots.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::cache::{publish_dir, Cache, KeyBuilder, Lock};
use crate::elf;
use crate::error::{Error, IoContext, Result};

/// The line /init prints once it runs; only user-mode code can produce it.
pub const MARKER: &str = "PETREL-BOOT-TEST-INIT-OK";

/// Changes whenever the recipe below changes in a way that alters the archive.
pub const RECIPE_VERSION: &str = "petrel-initramfs-recipe-1";

/// Where Debian's busybox-static puts its binary.
pub const BUSYBOX_PATH: &str = "/bin/busybox";

/// The file name of the archive inside its cache entry.
const FILE_NAME: &str = "initramfs.cpio";

/// File type bits of `st_mode`.
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// The name of the entry that ends a newc archive.
const TRAILER: &str = "TRAILER!!!";

/// Size of a newc header: the magic and 13 fields of 8 hex digits.
pub const HEADER_LEN: usize = 110;

/// The /init script.
pub fn init_script() -> String {
    format!(
        "#!/bin/busybox sh\n\
         # Petrel boot test: reaching this line proves guest user mode runs.\n\
         echo {MARKER} > /dev/console\n\
         /bin/busybox reboot -f\n\
         # reboot -f does not return; if it fails, make that visible.\n\
         echo PETREL-BOOT-TEST-REBOOT-FAILED > /dev/console\n"
    )
}

/// Writes a `newc` ("070701") cpio archive. Entries get inode numbers 1, 2, ... and
/// mtime 0, so the same input always gives the same bytes.
#[derive(Debug)]
pub struct NewcWriter<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
}

/// The fields of one newc header that vary between entries.
struct Header<'a> {
    name: &'a str,
    mode: u32,
    nlink: u32,
    size: u32,
    rdev: (u32, u32),
    ino: u32,
}

impl<W: Write> NewcWriter<W> {
    /// Starts an archive written to `out`.
    pub fn new(out: W) -> Self {
        Self {
            out,
            written: 0,
            next_ino: 1,
        }
    }

    /// A directory; `path` has no leading slash.
    pub fn dir(&mut self, path: &str, perm: u32) -> io::Result<()> {
        self.entry(path, S_IFDIR | perm, 2, (0, 0), &[])
    }

    /// A regular file holding `data`.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(path, S_IFREG | perm, 1, (0, 0), data)
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.entry(path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// A character device node.
    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(path, S_IFCHR | perm, 1, (major, minor), &[])
    }

    /// Writes the trailer and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.header(&Header {
            name: TRAILER,
            mode: 0,
            nlink: 1,
            size: 0,
            rdev: (0, 0),
            ino: 0,
        })?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        if name.is_empty() || name.starts_with('/') || name == TRAILER || name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad cpio entry name {name:?}"),
            ));
        }
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "cpio newc entries stop at 4 GiB",
            )
        })?;
        let ino = self.next_ino;
        self.next_ino += 1;
        self.header(&Header {
            name,
            mode,
            nlink,
            size,
            rdev,
            ino,
        })?;
        self.put(data)?;
        self.pad()
    }

    fn header(&mut self, h: &Header<'_>) -> io::Result<()> {
        let namesize = h.name.len() + 1;
        let namesize = u32::try_from(namesize)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cpio name too long"))?;
        // Fields: ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor
        // rdevminor namesize check.
        let fields = [
            h.ino, h.mode, 0, 0, h.nlink, 0, h.size, 0, 0, h.rdev.0, h.rdev.1, namesize, 0,
        ];
        let mut text = String::with_capacity(HEADER_LEN);
        text.push_str("070701");
        for f in fields {
            text.push_str(&format!("{f:08x}"));
        }
        debug_assert_eq!(text.len(), HEADER_LEN);
        self.put(text.as_bytes())?;
        self.put(h.name.as_bytes())?;
        self.put(&[0])?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Pads with NULs to the next multiple of 4 bytes from the archive's start.
    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0; 3][..n])
    }
}

/// Writes the whole boot-test archive around the given busybox binary.
pub fn write_archive<W: Write>(out: W, busybox: &[u8]) -> io::Result<W> {
    let mut w = NewcWriter::new(out);
    for dir in ["bin", "dev", "proc", "sys", "tmp", "root"] {
        w.dir(dir, 0o755)?;
    }
    w.char_dev("dev/console", 0o600, 5, 1)?;
    w.char_dev("dev/null", 0o666, 1, 3)?;
    w.file("bin/busybox", 0o755, busybox)?;
    w.symlink("bin/sh", "busybox")?;
    w.file("init", 0o755, init_script().as_bytes())?;
    w.finish()
}

/// Builds the archive (or finds it in the cache) and returns its path.
pub fn build(cache: &Cache) -> Result<PathBuf> {
    let busybox = fs::read(BUSYBOX_PATH)
        .ctx(|| format!("reading {BUSYBOX_PATH} (from Debian's busybox-static package)"))?;
    match elf::is_static(&busybox) {
        Some(true) => {}
        Some(false) => {
            return Err(Error::Other(format!(
                "{BUSYBOX_PATH} is dynamically linked; the initramfs has no libc. \
                 Install busybox-static (it replaces the dynamic busybox)"
            )))
        }
        None => {
            return Err(Error::Other(format!(
                "{BUSYBOX_PATH} is not an x86_64 ELF executable"
            )))
        }
    }
    let key = KeyBuilder::new("initramfs")
        .add("recipe", RECIPE_VERSION.as_bytes())
        .add("init", init_script().as_bytes())
        .add("busybox", &busybox)
        .finish();
    let top = cache.dir("initramfs")?;
    let entry = top.join(&key);
    let path = entry.join(FILE_NAME);
    if path.is_file() {
        println!("initramfs: cached ({key})");
        return Ok(path);
    }
    let _lock = Lock::acquire(&top.join(format!("{key}.lock")))?;
    if path.is_file() {
        println!("initramfs: cached ({key}), built by another run");
        return Ok(path);
    }
    let tmp = top.join(format!("{key}.tmp"));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
    let tmp_file = tmp.join(FILE_NAME);
    let file = fs::File::create(&tmp_file).ctx(|| format!("creating {}", tmp_file.display()))?;
    write_archive(io::BufWriter::new(file), &busybox)
        .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
        .and_then(|f| f.sync_all())
        .ctx(|| format!("writing {}", tmp_file.display()))?;
    publish_dir(&tmp, &entry)?;
    println!("initramfs: built ({key})");
    Ok(path)
}

/// Size of the file at `path`, for reports.
pub fn file_size(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One parsed newc entry.
    #[derive(Debug)]
    struct Entry {
        fields: Vec<u32>,
        name: String,
        data: Vec<u8>,
    }

    /// A reader written against the format description, to check the writer.
    fn parse(mut b: &[u8]) -> Vec<Entry> {
        let total = b.len();
        let mut out = Vec::new();
        loop {
            let at = total - b.len();
            assert_eq!(at % 4, 0, "entry at {at} not 4-byte aligned");
            assert_eq!(&b[..6], b"070701");
            let fields: Vec<u32> = (0..13)
                .map(|i| {
                    let hex = std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).unwrap();
                    assert!(hex.bytes().all(|c| c.is_ascii_hexdigit()));
                    u32::from_str_radix(hex, 16).unwrap()
                })
                .collect();
            let namesize = fields[11] as usize;
            let name_end = HEADER_LEN + namesize;
            assert_eq!(b[name_end - 1], 0, "name not NUL-terminated");
            let name = String::from_utf8(b[HEADER_LEN..name_end - 1].to_vec()).unwrap();
            let data_start = (at + name_end).div_ceil(4) * 4 - at;
            assert!(b[name_end..data_start].iter().all(|&x| x == 0));
            let size = fields[6] as usize;
            let data = b[data_start..data_start + size].to_vec();
            let next = (at + data_start + size).div_ceil(4) * 4 - at;
            assert!(b[data_start + size..next].iter().all(|&x| x == 0));
            b = &b[next..];
            let end = name == TRAILER;
            out.push(Entry { fields, name, data });
            if end {
                assert!(b.is_empty(), "bytes after trailer");
                return out;
            }
        }
    }

    #[test]
    fn header_format() {
        let mut w = NewcWriter::new(Vec::new());
        w.file("init", 0o755, b"hi").unwrap();
        let bytes = w.finish().unwrap();
        let expected = concat!(
            "070701", "00000001", "000081ed", "00000000", "00000000", "00000001", "00000000",
            "00000002", "00000000", "00000000", "00000000", "00000000", "00000005", "00000000",
        );
        assert_eq!(&bytes[..HEADER_LEN], expected.as_bytes());
        // 110 + 5 = 115: one NUL of padding, then the data at 116, padded to 120.
        assert_eq!(&bytes[HEADER_LEN..120], b"init\0\0hi\0\0");
    }

    #[test]
    fn padding_for_every_name_and_data_length() {
        for name_len in 1..=8 {
            for data_len in 0..=8 {
                let name = "n".repeat(name_len);
                let data = vec![0xa5; data_len];
                let mut w = NewcWriter::new(Vec::new());
                w.file(&name, 0o644, &data).unwrap();
                w.dir("d", 0o755).unwrap();
                let bytes = w.finish().unwrap();
                assert_eq!(bytes.len() % 4, 0);
                let entries = parse(&bytes);
                assert_eq!(entries.len(), 3);
                assert_eq!(entries[0].name, name);
                assert_eq!(entries[0].data, data);
                assert_eq!(entries[1].name, "d");
            }
        }
    }

    #[test]
    fn trailer() {
        let bytes = NewcWriter::new(Vec::new()).finish().unwrap();
        let entries = parse(&bytes);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].name, "TRAILER!!!");
        assert_eq!(entries[0].fields[11], 11); // namesize counts the NUL
        assert_eq!(entries[0].fields[6], 0);
        // 110 + 11 = 121, padded to 124.
        assert_eq!(bytes.len(), 124);
    }

    #[test]
    fn node_types_and_devices() {
        let mut w = NewcWriter::new(Vec::new());
        w.dir("dev", 0o755).unwrap();
        w.char_dev("dev/console", 0o600, 5, 1).unwrap();
        w.symlink("bin/sh", "busybox").unwrap();
        let entries = parse(&w.finish().unwrap());
        assert_eq!(entries[0].fields[1], 0o040755);
        assert_eq!(entries[0].fields[4], 2);
        let console = &entries[1];
        assert_eq!(console.fields[1], 0o020600);
        assert_eq!((console.fields[9], console.fields[10]), (5, 1));
        assert_eq!(console.fields[6], 0);
        assert_eq!(entries[2].fields[1], 0o120777);
        assert_eq!(entries[2].data, b"busybox");
        // Inode numbers are distinct and start at 1.
        assert_eq!(
            entries.iter().map(|e| e.fields[0]).collect::<Vec<_>>(),
            [1, 2, 3, 0]
        );
    }

    #[test]
    fn bad_names_rejected() {
        let mut w = NewcWriter::new(Vec::new());
        assert!(w.file("/init", 0o755, b"").is_err());
        assert!(w.file("", 0o755, b"").is_err());
        assert!(w.file(TRAILER, 0o755, b"").is_err());
    }

    #[test]
    fn archive_contents() {
        let bytes = write_archive(Vec::new(), b"\x7fELF fake busybox").unwrap();
        let entries = parse(&bytes);
        let find = |name: &str| entries.iter().find(|e| e.name == name).unwrap();
        let init = find("init");
        assert_eq!(init.fields[1], 0o100755);
        let script = String::from_utf8(init.data.clone()).unwrap();
        assert!(script.starts_with("#!/bin/busybox sh\n"));
        assert!(script.contains(&format!("echo {MARKER} > /dev/console\n")));
        assert!(script.contains("reboot -f"));
        assert_eq!(find("bin/busybox").data, b"\x7fELF fake busybox");
        let console = find("dev/console");
        assert_eq!((console.fields[9], console.fields[10]), (5, 1));
        // Deterministic: the cache key can rely on identical inputs giving identical bytes.
        assert_eq!(
            bytes,
            write_archive(Vec::new(), b"\x7fELF fake busybox").unwrap()
        );
    }
}

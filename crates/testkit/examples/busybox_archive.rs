fn main() {
    let path = std::env::args().nth(1).expect("output path");
    kubox_testkit::images::write_busybox_archive(
        std::path::Path::new(&path),
        "docker.io/library/busybox:latest",
    );
}

#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| otter::fuzzing::zstd_chunked_toc(data));

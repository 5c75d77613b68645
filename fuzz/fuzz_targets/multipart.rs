//! The server's streaming multipart parser on arbitrary bodies cut into arbitrary frames: it
//! never panics, and the parts it finds (names, file names, bytes) or its error do not depend on
//! where the frames were cut, so no boundary is missed or invented at a frame's edge.
#![no_main]
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ml_dash_server::multipart::parse_frames;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    // Bodies made mostly of boundary pieces, so that near-boundaries are common.
    let boundary = "XyZ";
    let mut body = Vec::new();
    for &b in rest {
        match b % 8 {
            0 => body.extend_from_slice(b"\r\n--XyZ"),
            1 => body.extend_from_slice(b"\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\n"),
            2 => body.extend_from_slice(b"--"),
            3 => body.extend_from_slice(b"\r\n"),
            _ => body.push(b),
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let whole = rt.block_on(parse_frames(vec![Bytes::from(body.clone())], boundary));
    let size = usize::from(cut % 17) + 1;
    let frames: Vec<Bytes> = body.chunks(size).map(Bytes::copy_from_slice).collect();
    let cut_up = rt.block_on(parse_frames(frames, boundary));
    match (&whole, &cut_up) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "frames of {size}"),
        (Err(_), Err(_)) => {}
        _ => panic!("frames of {size}: {whole:?} vs {cut_up:?}"),
    }
});

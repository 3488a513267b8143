// The idx parser (MNIST, Fashion-MNIST) on arbitrary bytes, as images (3 dimensions) and as
// labels (1), and the CIFAR-10 batch parser.

pub fn run(data: &[u8]) {
    for ndim in [1u8, 3] {
        if let Ok((dims, body)) = mae_data::prepare::parse_idx(data, ndim) {
            let product = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
            assert_eq!(product, Some(body.len()), "dims {dims:?} vs {} bytes", body.len());
        }
    }
    if let Ok(records) = mae_data::prepare::parse_cifar10_batch(data) {
        assert!(records.iter().all(|(_, px)| px.len() == 3 * 32 * 32));
    }
}

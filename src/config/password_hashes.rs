//! Argon2 password hashes as configured (`microgateway hash-password`):
//! what the checks of unknown user names cost, so that the time an answer
//! takes does not tell which names exist.

use argon2::password_hash::phc::PasswordHash;

/// The Argon2 parameters the most hashes have (ties: the costliest);
/// the default ones when none parse.
pub fn commonest_params<'h>(hashes: impl Iterator<Item = &'h PasswordHash>) -> argon2::Params {
    let mut counted: Vec<(argon2::Params, usize)> = Vec::new();
    for params in hashes.filter_map(|h| argon2::Params::try_from(h).ok()) {
        match counted.iter_mut().find(|(p, _)| *p == params) {
            Some((_, count)) => *count += 1,
            None => counted.push((params, 1)),
        }
    }
    let cost = |p: &argon2::Params| (p.m_cost(), p.t_cost(), p.p_cost());
    counted
        .into_iter()
        .max_by(|(a, n), (b, m)| n.cmp(m).then_with(|| cost(a).cmp(&cost(b))))
        .map_or_else(argon2::Params::default, |(params, _)| params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::{Algorithm, Argon2, Params, PasswordHasher, Version};

    fn hashed_with(m_cost: u32, t_cost: u32) -> String {
        let params = Params::new(m_cost, t_cost, 1, None).expect("params");
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(b"pw")
            .expect("hash")
            .to_string()
    }

    /// An unknown user's check costs what most users' checks cost, in
    /// whatever order the users come: the timing tells no name apart
    /// from most of them.
    #[test]
    fn the_commonest_parameters_are_those_most_hashes_have() {
        let most = hashed_with(16, 2);
        let other = hashed_with(64, 1);
        let hashes: Vec<PasswordHash> = [&other, &most, &most]
            .iter()
            .map(|h| PasswordHash::new(h).expect("hash"))
            .collect();
        for order in [[0, 1, 2], [1, 2, 0], [2, 0, 1]] {
            let params = commonest_params(order.iter().map(|&i| &hashes[i]));
            assert_eq!((params.m_cost(), params.t_cost()), (16, 2));
        }
        // As many of each: the costlier.
        let tie: Vec<PasswordHash> = [&other, &most]
            .iter()
            .map(|h| PasswordHash::new(h).expect("hash"))
            .collect();
        let params = commonest_params(tie.iter().rev());
        assert_eq!((params.m_cost(), params.t_cost()), (64, 1));
        let params = commonest_params(tie.iter());
        assert_eq!((params.m_cost(), params.t_cost()), (64, 1));
    }
}

//! Training steps for HTG and the triplet baselines, checkpoints and resume.
//!
//! Every step draws its batch, augmentation and mining from an RNG seeded by
//! `(config.seed, step)`, so a run resumed from a checkpoint continues exactly as if it had
//! not stopped (module weights, batch-norm statistics and Adam moments are all saved).

use std::path::Path;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::store::{BurnpackStore, ModuleSnapshot};
use burn::tensor::{Device, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::backend::train_device;
use crate::config::{GeneratorMode, Method, Mining, TrainConfig};
use crate::data::{make_batch, ImageSet, PkSampler};
use crate::loss::{
    cross_entropy, distance_matrix, inverted_triplet_loss, mine, multi_similarity_loss, rows,
    sq_dist, triplet_loss, Triplets,
};
use crate::model::{l2_normalize, Discriminator, FeatureNet, Generator, Proxies};
use crate::TrainError;

/// What one step measured (for the progress bar, logs and tests).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StepStats {
    /// Step number (1-based, after the step).
    pub step: usize,
    /// F's loss.
    pub loss_f: f32,
    /// G's loss (HTG only).
    pub loss_g: Option<f32>,
    /// D's loss (HTG only).
    pub loss_d: Option<f32>,
    /// D's accuracy at telling real from generated embeddings (HTG only; "fake" when the
    /// fake class gets p > 1/2, so a D that never says fake scores 0.5: read it with the
    /// p(fake) means below).
    pub d_real_fake_acc: Option<f32>,
    /// D's mean p(fake) on real triplet embeddings, after its update (HTG only).
    #[serde(default)]
    pub d_p_fake_real: Option<f32>,
    /// D's mean p(fake) on G's embeddings, after its update (HTG only).
    #[serde(default)]
    pub d_p_fake_gen: Option<f32>,
    /// Mean `d(a,p) − d(a,n)` of the input (mined) triplets: higher = harder.
    pub hardness_in: f32,
    /// Mean `d(a',p') − d(a',n')` of G's triplets (HTG only).
    pub hardness_out: Option<f32>,
    /// Number of triplets in the step.
    pub triplets: usize,
}

/// Progress saved beside the weights so `--resume` knows where to continue.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CheckpointState {
    /// Steps completed.
    pub step: usize,
    /// Method of the run.
    pub method: Method,
    /// Number of training classes (D's K).
    pub train_classes: usize,
}

/// HTG's extra networks and their optimisers.
struct Adversary {
    g: Generator,
    d: Discriminator,
    opt_g: ModuleOptimizer,
    opt_d: ModuleOptimizer,
}

/// F (and, for HTG, G and D) with their optimisers and the step counter.
pub struct Trainer {
    cfg: TrainConfig,
    device: Device,
    f: FeatureNet,
    opt_f: ModuleOptimizer,
    adv: Option<Adversary>,
    /// The normalised-softmax baseline's class proxies and their optimiser.
    proxies: Option<(Proxies, ModuleOptimizer)>,
    train_classes: usize,
    step: usize,
}

fn adam() -> ModuleOptimizer {
    AdamConfig::new().init()
}

fn host(t: Tensor<2>) -> Vec<f32> {
    t.detach()
        .into_data()
        .try_to_vec::<f32>()
        .expect("float tensor")
}

fn mean_gap(dap: &[f32], dan: &[f32]) -> f32 {
    if dap.is_empty() {
        return 0.0;
    }
    dap.iter().zip(dan).map(|(p, n)| p - n).sum::<f32>() / dap.len() as f32
}

fn row_sq_dists(a: &[f32], b: &[f32], d: usize) -> Vec<f32> {
    a.chunks_exact(d)
        .zip(b.chunks_exact(d))
        .map(|(x, y)| x.iter().zip(y).map(|(u, v)| (u - v) * (u - v)).sum())
        .collect()
}

impl Trainer {
    /// Fresh networks for `train_classes` classes, initialised from `cfg.seed`.
    pub fn new(cfg: &TrainConfig, train_classes: usize) -> Result<Trainer, TrainError> {
        cfg.validate()?;
        let device = train_device();
        device.seed(cfg.seed);
        let f = FeatureNet::new(cfg, &device);
        let adv = (cfg.method == Method::Htg).then(|| Adversary {
            g: Generator::new(
                cfg.feature.embedding_dim,
                cfg.htg.g_hidden,
                cfg.htg.g_max_shift,
                &device,
            ),
            d: Discriminator::new(
                cfg.feature.embedding_dim,
                cfg.htg.d_hidden,
                train_classes,
                &device,
            ),
            opt_g: adam(),
            opt_d: adam(),
        });
        let proxies = (cfg.method == Method::NormSoftmax).then(|| {
            (
                Proxies::new(cfg.feature.embedding_dim, train_classes, &device),
                adam(),
            )
        });
        Ok(Trainer {
            cfg: cfg.clone(),
            device,
            f,
            opt_f: adam(),
            adv,
            proxies,
            train_classes,
            step: 0,
        })
    }

    /// Steps completed so far.
    pub fn step(&self) -> usize {
        self.step
    }

    /// Number of training classes (D's K).
    pub fn train_classes(&self) -> usize {
        self.train_classes
    }

    /// The configuration being trained.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// F as trained so far (call `.valid()` for inference).
    pub fn feature_net(&self) -> &FeatureNet {
        &self.f
    }

    /// The RNG of step `step` (1-based): a pure function of the seed and the step.
    fn step_rng(&self, step: usize) -> StdRng {
        StdRng::seed_from_u64(
            self.cfg
                .seed
                .wrapping_add((step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        )
    }

    /// One optimisation step on a P×K batch of `set`.
    pub fn train_step(&mut self, set: &ImageSet, sampler: &PkSampler) -> StepStats {
        let step = self.step + 1;
        let mut rng = self.step_rng(step);
        let idx = sampler.sample(
            self.cfg.classes_per_batch,
            self.cfg.images_per_class,
            &mut rng,
        );
        let labels: Vec<usize> = idx.iter().map(|&i| set.labels[i]).collect();
        let [c, h, w] = set.chw;
        let x = make_batch(set, &idx, &self.cfg.augment, &mut rng);
        let x = Tensor::<4>::from_data(TensorData::new(x, [idx.len(), c, h, w]), &self.device);
        let emb = l2_normalize(self.f.forward(x));
        let b = idx.len();
        let d = self.cfg.feature.embedding_dim;
        let dist = distance_matrix(&host(emb.clone()), b, d);
        let mining = match self.cfg.method {
            Method::Htg => self.cfg.htg.input_mining,
            Method::TripletRandom => Mining::Random,
            Method::TripletSemihard => Mining::Semihard,
            // Multi-similarity mines its own pairs and the proxy loss needs none; batch-hard
            // triplets only feed the stats.
            Method::TripletBatchhard | Method::MultiSimilarity | Method::NormSoftmax => {
                Mining::Batchhard
            }
        };
        let t = mine(mining, &labels, &dist, &mut rng);
        let dap: Vec<f32> = (0..t.len()).map(|i| dist[t.a[i] * b + t.p[i]]).collect();
        let dan: Vec<f32> = (0..t.len()).map(|i| dist[t.a[i] * b + t.n[i]]).collect();
        let mut stats = StepStats {
            step,
            hardness_in: mean_gap(&dap, &dan),
            triplets: t.len(),
            ..StepStats::default()
        };
        if self.cfg.method == Method::Htg {
            self.htg_update(step, emb, &labels, &t, &mut rng, &mut stats);
        } else if self.cfg.method == Method::MultiSimilarity {
            let m = &self.cfg.ms;
            let loss = multi_similarity_loss(emb, &labels, m.alpha, m.beta, m.lambda, m.epsilon);
            stats.loss_f = scalar(&loss);
            let grads = GradientsParams::from_grads(loss.backward(), &self.f);
            self.f = self.opt_f.step(self.cfg.lr_at(step), self.f.clone(), grads);
        } else if let Some((proxies, opt_p)) = self.proxies.as_mut() {
            let loss = cross_entropy(proxies.forward(emb, self.cfg.proxy.temperature), &labels);
            stats.loss_f = scalar(&loss);
            let mut grads = loss.backward();
            let gp = GradientsParams::from_module(&mut grads, &*proxies);
            let gf = GradientsParams::from_grads(grads, &self.f);
            *proxies = opt_p.step(self.cfg.proxy.lr, proxies.clone(), gp);
            self.f = self.opt_f.step(self.cfg.lr_at(step), self.f.clone(), gf);
        } else {
            let loss = triplet_loss(
                rows(emb.clone(), &t.a),
                rows(emb.clone(), &t.p),
                rows(emb, &t.n),
                self.cfg.margin,
            );
            stats.loss_f = scalar(&loss);
            let grads = GradientsParams::from_grads(loss.backward(), &self.f);
            self.f = self.opt_f.step(self.cfg.lr_at(step), self.f.clone(), grads);
        }
        self.step = step;
        stats
    }

    /// D, then G, then F, as in Zhao et al.: D on detached real and generated embeddings,
    /// G against the updated D, F through the updated G. The G ablations
    /// ([`GeneratorMode`]) replace G and skip the D and G updates.
    fn htg_update(
        &mut self,
        step: usize,
        emb: Tensor<2>,
        labels: &[usize],
        t: &Triplets,
        rng: &mut StdRng,
        s: &mut StepStats,
    ) {
        let adv = self.adv.as_mut().expect("HTG trainer has G and D");
        let hc = &self.cfg.htg;
        let k = self.train_classes;
        let n_t = t.len();
        let dim = self.cfg.feature.embedding_dim;

        if hc.g_mode == GeneratorMode::Learned {
            let mut tri_labels: Vec<usize> = t.a.iter().map(|&i| labels[i]).collect();
            tri_labels.extend(t.p.iter().map(|&i| labels[i]));
            tri_labels.extend(t.n.iter().map(|&i| labels[i]));
            let fake_labels = vec![k; 3 * n_t];

            let e = emb.clone().detach();
            let (a, p, n) = (rows(e.clone(), &t.a), rows(e.clone(), &t.p), rows(e, &t.n));

            // D: L_real + b_D·L_fake on real and (detached) generated triplets.
            let (ga, gp, gn) = adv.g.forward(a.clone(), p.clone(), n.clone());
            let fake = Tensor::cat(vec![ga, gp, gn], 0).detach();
            let real = Tensor::cat(vec![a.clone(), p.clone(), n.clone()], 0);
            for _ in 0..hc.d_steps.max(1) {
                let logits_real = adv.d.forward(real.clone());
                let logits_fake = adv.d.forward(fake.clone());
                let loss_d = cross_entropy(logits_real, &tri_labels)
                    + cross_entropy(logits_fake, &fake_labels).mul_scalar(hc.b_d());
                s.loss_d = Some(scalar(&loss_d));
                let grads = GradientsParams::from_grads(loss_d.backward(), &adv.d);
                adv.d = adv.opt_d.step(hc.lr_d, adv.d.clone(), grads);
            }

            // D on this batch right after its update: mean p(fake) on real and generated
            // rows, and its accuracy ("fake" when p(fake) > 1/2). Measured before the update
            // it would mostly score G, which was just trained against the previous D.
            let p_fake = |logits: Vec<f32>| -> Vec<f32> {
                logits
                    .chunks_exact(k + 1)
                    .map(|row| {
                        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        let z: f32 = row.iter().map(|v| (v - m).exp()).sum();
                        (row[k] - m).exp() / z
                    })
                    .collect()
            };
            let pr = p_fake(host(adv.d.forward(real)));
            let pg = p_fake(host(adv.d.forward(fake)));
            let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len().max(1) as f32;
            s.d_p_fake_real = Some(mean(&pr));
            s.d_p_fake_gen = Some(mean(&pg));
            let correct =
                pr.iter().filter(|&&q| q <= 0.5).count() + pg.iter().filter(|&&q| q > 0.5).count();
            s.d_real_fake_acc = Some(correct as f32 / (6 * n_t).max(1) as f32);

            // G: inverted triplet loss + b_G·L_cls (D must still recognise the real labels),
            // plus the optional soft penalty on how far G moves its input.
            let (ga, gp, gn) = adv.g.forward(a.clone(), p.clone(), n.clone());
            let l_inv = inverted_triplet_loss(ga.clone(), gp.clone(), gn.clone(), hc.g_margin);
            let mut loss_g = l_inv;
            if hc.b_g() > 0.0 {
                let l_cls = cross_entropy(
                    adv.d
                        .forward(Tensor::cat(vec![ga.clone(), gp.clone(), gn.clone()], 0)),
                    &tri_labels,
                );
                loss_g = loss_g + l_cls.mul_scalar(hc.b_g());
            }
            if hc.g_penalty > 0.0 {
                let moved = (sq_dist(ga, a) + sq_dist(gp, p) + sq_dist(gn, n)).mean();
                loss_g = loss_g + moved.mul_scalar(hc.g_penalty);
            }
            s.loss_g = Some(scalar(&loss_g));
            let grads = GradientsParams::from_grads(loss_g.backward(), &adv.g);
            adv.g = adv.opt_g.step(hc.lr_g, adv.g.clone(), grads);
        }

        // F: triplet loss on G's triplets, gradient through G into F (+ optional real term).
        let (a, p, n) = (
            rows(emb.clone(), &t.a),
            rows(emb.clone(), &t.p),
            rows(emb, &t.n),
        );
        let (ga, gp, gn) = match hc.g_mode {
            GeneratorMode::Learned => adv.g.forward(a.clone(), p.clone(), n.clone()),
            GeneratorMode::Identity => (a.clone(), p.clone(), n.clone()),
            GeneratorMode::Noise => {
                let device = a.device();
                let bound = hc.g_max_shift;
                let mut noisy = |x: Tensor<2>| {
                    let v: Vec<f32> = (0..n_t * dim)
                        .map(|_| rng.random_range(-bound..=bound))
                        .collect();
                    let z = Tensor::<2>::from_data(TensorData::new(v, [n_t, dim]), &device);
                    l2_normalize(x + z)
                };
                (noisy(a.clone()), noisy(p.clone()), noisy(n.clone()))
            }
        };
        let (ha, hp, hn) = (host(ga.clone()), host(gp.clone()), host(gn.clone()));
        s.hardness_out = Some(mean_gap(
            &row_sq_dists(&ha, &hp, dim),
            &row_sq_dists(&ha, &hn, dim),
        ));
        let real_loss = triplet_loss(a, p, n, self.cfg.margin);
        let loss_f = if step <= hc.warmup_steps {
            // Warm-up: F learns from the real triplets alone while D learns the classes.
            real_loss
        } else if hc.real_triplet_weight > 0.0 {
            triplet_loss(ga, gp, gn, self.cfg.margin) + real_loss.mul_scalar(hc.real_triplet_weight)
        } else {
            triplet_loss(ga, gp, gn, self.cfg.margin)
        };
        s.loss_f = scalar(&loss_f);
        let grads = GradientsParams::from_grads(loss_f.backward(), &self.f);
        self.f = self.opt_f.step(self.cfg.lr_at(step), self.f.clone(), grads);
    }

    /// Writes weights, optimiser states, progress and the config into `dir`.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<(), TrainError> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
        let ck = |e: &dyn std::fmt::Display| TrainError::Checkpoint(e.to_string());
        save_module(&self.f, &dir.join("f.bpk"))?;
        self.opt_f.save(dir.join("opt_f.bpk")).map_err(|e| ck(&e))?;
        if let Some(adv) = &self.adv {
            save_module(&adv.g, &dir.join("g.bpk"))?;
            save_module(&adv.d, &dir.join("d.bpk"))?;
            adv.opt_g.save(dir.join("opt_g.bpk")).map_err(|e| ck(&e))?;
            adv.opt_d.save(dir.join("opt_d.bpk")).map_err(|e| ck(&e))?;
        }
        if let Some((proxies, opt_p)) = &self.proxies {
            save_module(proxies, &dir.join("proxies.bpk"))?;
            opt_p
                .save(dir.join("opt_proxies.bpk"))
                .map_err(|e| ck(&e))?;
        }
        self.cfg.save(&dir.join("config.toml"))?;
        let state = CheckpointState {
            step: self.step,
            method: self.cfg.method,
            train_classes: self.train_classes,
        };
        let json = serde_json::to_string_pretty(&state).map_err(|e| ck(&e))?;
        // Written last: a checkpoint without state.json is incomplete and is not resumed.
        std::fs::write(dir.join("state.json"), json).map_err(|e| TrainError::Io {
            path: dir.join("state.json"),
            source: e,
        })
    }

    /// Restores a trainer from a checkpoint directory written by [`save_checkpoint`].
    ///
    /// [`save_checkpoint`]: Trainer::save_checkpoint
    pub fn load_checkpoint(dir: &Path) -> Result<Trainer, TrainError> {
        let state_path = dir.join("state.json");
        if !state_path.is_file() {
            return Err(TrainError::Checkpoint(format!(
                "no checkpoint to resume at {} (missing state.json)",
                dir.display()
            )));
        }
        let text = std::fs::read_to_string(&state_path).map_err(|e| TrainError::Io {
            path: state_path.clone(),
            source: e,
        })?;
        let state: CheckpointState = serde_json::from_str(&text)
            .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", state_path.display())))?;
        let cfg = TrainConfig::load(&dir.join("config.toml"))?;
        let mut t = Trainer::new(&cfg, state.train_classes)?;
        let ck = |e: &dyn std::fmt::Display| TrainError::Checkpoint(e.to_string());
        load_module(&mut t.f, &dir.join("f.bpk"))?;
        t.opt_f = adam().load(dir.join("opt_f.bpk")).map_err(|e| ck(&e))?;
        if let Some(adv) = t.adv.as_mut() {
            load_module(&mut adv.g, &dir.join("g.bpk"))?;
            load_module(&mut adv.d, &dir.join("d.bpk"))?;
            adv.opt_g = adam().load(dir.join("opt_g.bpk")).map_err(|e| ck(&e))?;
            adv.opt_d = adam().load(dir.join("opt_d.bpk")).map_err(|e| ck(&e))?;
        }
        if let Some((proxies, opt_p)) = t.proxies.as_mut() {
            load_module(proxies, &dir.join("proxies.bpk"))?;
            *opt_p = adam()
                .load(dir.join("opt_proxies.bpk"))
                .map_err(|e| ck(&e))?;
        }
        t.step = state.step;
        Ok(t)
    }
}

fn scalar(t: &Tensor<1>) -> f32 {
    t.clone()
        .detach()
        .into_data()
        .try_to_vec::<f32>()
        .map_or(f32::NAN, |v| v[0])
}

fn save_module<M: Module>(m: &M, path: &Path) -> Result<(), TrainError> {
    // Batch-norm running statistics hold their latest update aside until synced; `valid()`
    // syncs them (the clone shares the state), so the file gets the current values.
    drop(m.valid());
    let mut store = BurnpackStore::from_file(path).overwrite(true);
    m.save_into(&mut store)
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", path.display())))
}

fn load_module<M: Module>(m: &mut M, path: &Path) -> Result<(), TrainError> {
    if !path.is_file() {
        return Err(TrainError::Checkpoint(format!(
            "missing {}",
            path.display()
        )));
    }
    let mut store = BurnpackStore::from_file(path);
    m.load_from(&mut store)
        .map(|_| ())
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FeatureConfig;

    fn tiny(method: Method) -> TrainConfig {
        TrainConfig {
            method,
            steps: 3,
            classes_per_batch: 4,
            images_per_class: 2,
            feature: FeatureConfig {
                input_size: 8,
                widths: vec![4],
                embedding_dim: 8,
                pool_grid: 1,
                ..FeatureConfig::default()
            },
            ..TrainConfig::default()
        }
    }

    fn set() -> ImageSet {
        let n = 6 * 3;
        ImageSet {
            data: (0..n * 3 * 64)
                .map(|i| ((i * 31 % 97) as f32) / 48.0 - 1.0)
                .collect(),
            labels: (0..n).map(|i| i / 3).collect(),
            chw: [3, 8, 8],
        }
    }

    #[test]
    fn the_proxy_loss_moves_the_proxies_and_falls_on_a_fixed_batch() {
        let data = set();
        let sampler = PkSampler::new(&data.labels).unwrap();
        let mut cfg = tiny(Method::NormSoftmax);
        cfg.augment.crop_pad = 0;
        cfg.augment.jitter = 0.0;
        let mut t = Trainer::new(&cfg, 6).unwrap();
        let before = host(t.proxies.as_ref().unwrap().0.forward(
            Tensor::<2>::from_data(TensorData::new(vec![1.0f32; 8], [1, 8]), &t.device),
            1.0,
        ));
        let losses: Vec<f32> = (0..30)
            .map(|_| {
                // The same step's batch every time: a fixed batch the loss can fit.
                t.step = 0;
                t.train_step(&data, &sampler).loss_f
            })
            .collect();
        let after = host(t.proxies.as_ref().unwrap().0.forward(
            Tensor::<2>::from_data(TensorData::new(vec![1.0f32; 8], [1, 8]), &t.device),
            1.0,
        ));
        assert!(before != after, "the proxies did not move");
        assert!(losses.iter().all(|l| l.is_finite()));
        assert!(losses[29] < 0.5 * losses[0], "{losses:?}");
    }

    #[test]
    fn every_method_and_g_ablation_takes_finite_steps() {
        let data = set();
        let sampler = PkSampler::new(&data.labels).unwrap();
        let mut cfgs = vec![
            tiny(Method::TripletBatchhard),
            tiny(Method::MultiSimilarity),
            tiny(Method::NormSoftmax),
            tiny(Method::Htg),
        ];
        for edit in [
            |c: &mut TrainConfig| c.htg.g_mode = GeneratorMode::Identity,
            |c: &mut TrainConfig| c.htg.g_mode = GeneratorMode::Noise,
            |c: &mut TrainConfig| c.htg.g_cls_weight = Some(0.0),
            |c: &mut TrainConfig| c.htg.real_triplet_weight = 0.0,
            |c: &mut TrainConfig| {
                c.htg.g_max_shift = 0.0;
                c.htg.g_penalty = 1.0;
            },
        ] {
            let mut c = tiny(Method::Htg);
            edit(&mut c);
            cfgs.push(c);
        }
        for cfg in cfgs {
            let mut t = Trainer::new(&cfg, 6).unwrap();
            for _ in 0..2 {
                let s = t.train_step(&data, &sampler);
                assert!(s.loss_f.is_finite(), "{:?} {:?}", cfg.method, cfg.htg);
                if cfg.method == Method::Htg && cfg.htg.g_mode == GeneratorMode::Learned {
                    let (r, g) = (s.d_p_fake_real.unwrap(), s.d_p_fake_gen.unwrap());
                    assert!((0.0..=1.0).contains(&r) && (0.0..=1.0).contains(&g));
                }
            }
        }
    }
}

//! Radiology-style reports written from the same hidden parameters as the voxels: every
//! present finding is described with its side, location, size and severity; absent findings
//! are negated ("No pleural effusion."). Wording is drawn from several templates per finding.

use rand::seq::IndexedRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::params::*;

/// The four text fields of a CT-RATE report.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub clinical_information: String,
    pub technique: String,
    pub findings: String,
    pub impressions: String,
}

fn pick<'a>(rng: &mut ChaCha8Rng, t: &[&'a str]) -> &'a str {
    t.choose(rng).copied().unwrap_or("")
}

fn cap(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

fn fill(t: &str, vars: &[(&str, String)]) -> String {
    let mut s = t.to_string();
    for (k, v) in vars {
        s = s.replace(&format!("{{{k}}}"), v);
    }
    cap(&s)
}

fn list(items: &[String]) -> String {
    match items.len() {
        0 => String::new(),
        1 => items[0].clone(),
        2 => format!("{} and {}", items[0], items[1]),
        n => format!("{}, and {}", items[..n - 1].join(", "), items[n - 1]),
    }
}

fn side_phrase(side: Side) -> &'static str {
    match side {
        Side::Right => "the right lung",
        Side::Left => "the left lung",
        Side::Bilateral => "both lungs",
    }
}

fn lobes_phrase(regions: &[Region]) -> String {
    let mut names: Vec<&str> = Vec::new();
    for r in regions {
        if !names.contains(&r.lobe.name()) {
            names.push(r.lobe.name());
        }
    }
    let v: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    list(&v)
}

fn mm(v: f64) -> String {
    format!("{}", v.round() as i64)
}

/// Write the report of one phantom.
pub fn write_report(p: &PhantomParams, rng: &mut ChaCha8Rng) -> Report {
    let f = &p.findings;
    let mut out: Vec<String> = Vec::new();
    let mut imp: Vec<String> = Vec::new();
    let neg = |rng: &mut ChaCha8Rng, out: &mut Vec<String>, optional: bool, t: &[&str]| {
        if !optional || rng.random_bool(0.7) {
            out.push(pick(rng, t).to_string());
        }
    };

    // Airways and mediastinum.
    out.push(
        pick(
            rng,
            &[
                "Trachea and both main bronchi are in midline and patent.",
                "Trachea and main bronchi are open.",
                "The trachea and both main bronchi are of normal calibre and patent.",
            ],
        )
        .into(),
    );
    out.push(
        pick(
            rng,
            &[
                "Mediastinal structures were evaluated as suboptimal since the examination was unenhanced.",
                "As the study is non-contrast, mediastinal vascular structures are assessed suboptimally.",
                "Mediastinal structures are evaluated within the limits of a non-contrast examination.",
            ],
        )
        .into(),
    );
    // Heart.
    match &f.cardiomegaly {
        Some(c) => {
            let t = pick(
                rng,
                &[
                    "Cardiomegaly is present, with a cardiothoracic ratio of {r}.",
                    "The heart is enlarged (cardiothoracic ratio {r}).",
                    "{sev} cardiomegaly is observed; the cardiothoracic ratio is {r}.",
                ],
            );
            out.push(fill(t, &[("r", format!("{:.2}", c.cardiothoracic_ratio)), ("sev", c.severity.word().into())]));
            imp.push(pick(rng, &["Cardiomegaly.", "Enlarged heart."]).into());
        }
        None => neg(
            rng,
            &mut out,
            false,
            &["Heart size is normal.", "Heart contour and size are normal.", "Heart size is within normal limits."],
        ),
    }
    match &f.pericardial_effusion {
        Some(e) => {
            let t = pick(
                rng,
                &[
                    "Pericardial effusion measuring {t} mm in thickness is seen around the heart.",
                    "There is a {sev} pericardial effusion with a maximal thickness of {t} mm.",
                    "A {t} mm thick rim of pericardial fluid surrounds the heart.",
                ],
            );
            out.push(fill(t, &[("t", mm(e.thickness_mm)), ("sev", e.severity.word().into())]));
            imp.push(fill(
                pick(rng, &["{sev} pericardial effusion.", "Pericardial effusion ({t} mm)."]),
                &[("sev", e.severity.word().into()), ("t", mm(e.thickness_mm))],
            ));
        }
        None => neg(
            rng,
            &mut out,
            false,
            &[
                "No pericardial effusion.",
                "There is no pericardial effusion or thickening.",
                "Pericardial effusion is not seen.",
            ],
        ),
    }
    // Aorta.
    out.push(pick(rng, &["Thoracic aorta diameter is normal.", "The calibre of the thoracic aorta is normal."]).into());
    match &f.arterial_wall_calcification {
        Some(c) => {
            let t = pick(
                rng,
                &[
                    "{sev} atherosclerotic calcified plaques are seen in the wall of the {v}.",
                    "Calcified atheromatous plaques are noted in the {v} wall ({sev} aortic calcification).",
                    "There is {sev} mural calcification of the {v}.",
                ],
            );
            let v = list(&c.vessels);
            out.push(fill(t, &[("sev", c.severity.word().into()), ("v", v)]));
            imp.push(pick(rng, &["Atherosclerotic calcification of the aorta.", "Aortic wall calcification."]).into());
        }
        None => neg(
            rng,
            &mut out,
            false,
            &[
                "No calcification is seen in the wall of the thoracic aorta.",
                "The thoracic aorta shows no calcified plaque.",
            ],
        ),
    }
    match &f.coronary_calcification {
        Some(c) => {
            let t = pick(
                rng,
                &[
                    "{sev} calcified plaques are seen in the coronary arteries ({v}).",
                    "Coronary artery wall calcification is present in the {v}.",
                    "There are calcific coronary plaques involving the {v} ({sev}).",
                ],
            );
            let v = list(&c.vessels);
            out.push(fill(t, &[("sev", c.severity.word().into()), ("v", v)]));
            imp.push(pick(rng, &["Coronary artery calcification.", "Calcific coronary atherosclerosis."]).into());
        }
        None => neg(
            rng,
            &mut out,
            false,
            &["No coronary artery calcification.", "Coronary arteries show no calcific plaques."],
        ),
    }
    // Lymph nodes.
    match &f.lymphadenopathy {
        Some(l) => {
            let mut parts: Vec<String> = Vec::new();
            for n in &l.nodes {
                parts.push(format!("{} ({} mm short axis)", n.station, mm(n.short_axis_mm)));
            }
            let t = if l.nodes.len() == 1 {
                pick(
                    rng,
                    &[
                        "An enlarged lymph node is seen in the {s} station.",
                        "Lymphadenopathy is present: enlarged lymph node in the {s} station.",
                    ],
                )
            } else {
                pick(
                    rng,
                    &[
                        "Enlarged lymph nodes are seen in the {s} stations.",
                        "Mediastinal lymphadenopathy is present, with enlarged lymph nodes in the {s} stations.",
                    ],
                )
            };
            out.push(fill(t, &[("s", list(&parts))]));
            imp.push(pick(rng, &["Mediastinal lymphadenopathy.", "Enlarged mediastinal lymph nodes."]).into());
        }
        None => neg(
            rng,
            &mut out,
            false,
            &[
                "No mediastinal or hilar lymphadenopathy.",
                "No lymph node of pathological size is seen in the mediastinum or hila.",
            ],
        ),
    }
    // Esophagus and hiatus.
    match &f.hiatal_hernia {
        Some(h) => {
            let t = pick(
                rng,
                &[
                    "A {d} mm hiatal hernia is seen behind the heart.",
                    "There is a {sev} hiatal hernia measuring {d} mm, containing gas.",
                    "Hiatal hernia with a diameter of {d} mm is present.",
                ],
            );
            let sev = match h.severity {
                Severity::Mild => "small",
                Severity::Moderate => "moderate",
                Severity::Severe => "large",
            };
            out.push(fill(t, &[("d", mm(h.size_mm)), ("sev", sev.into())]));
            imp.push(pick(rng, &["Hiatal hernia.", "Hiatus hernia."]).into());
        }
        None => {
            out.push(pick(rng, &["The esophagus is of normal calibre.", "Esophageal calibre is normal."]).into());
            neg(rng, &mut out, true, &["No hiatal hernia.", "There is no hiatal hernia."]);
        }
    }
    // Lungs.
    out.push(
        pick(rng, &["When examined in the lung parenchyma window:", "Lung parenchyma:", "In the lung window:"]).into(),
    );
    match &f.emphysema {
        Some(e) => {
            let t = pick(
                rng,
                &[
                    "{sev} {k} emphysema is seen in the upper zones of {side}.",
                    "There are {k} emphysematous changes in {side}, upper-lobe predominant ({sev}).",
                    "{sev} {k} emphysema in {side}.",
                ],
            );
            out.push(fill(
                t,
                &[("sev", e.severity.word().into()), ("k", e.kind.clone()), ("side", side_phrase(e.side).into())],
            ));
            imp.push(fill(
                pick(rng, &["{sev} emphysema.", "{k} emphysema."]),
                &[("sev", e.severity.word().into()), ("k", e.kind.clone())],
            ));
        }
        None => neg(rng, &mut out, false, &["No emphysema.", "No emphysematous changes are seen."]),
    }
    match &f.lung_nodule {
        Some(n) => {
            let mut sorted: Vec<&Nodule> = n.nodules.iter().collect();
            sorted.sort_by(|a, b| b.diameter_mm.total_cmp(&a.diameter_mm));
            for (i, nd) in sorted.iter().enumerate() {
                let t = if i == 0 {
                    pick(
                        rng,
                        &[
                            "A {d} mm solid nodule is seen in the {lobe}.",
                            "There is a solid pulmonary nodule measuring {d} mm in the {lobe}.",
                            "Solid nodule with a diameter of {d} mm in the {lobe}.",
                        ],
                    )
                } else {
                    pick(
                        rng,
                        &[
                            "Another solid nodule of {d} mm is seen in the {lobe}.",
                            "An additional {d} mm nodule is present in the {lobe}.",
                        ],
                    )
                };
                out.push(fill(t, &[("d", mm(nd.diameter_mm)), ("lobe", nd.lobe.name().into())]));
            }
            let big = sorted[0];
            imp.push(fill(
                pick(rng, &["{d} mm pulmonary nodule in the {lobe}.", "Solid nodule in the {lobe} ({d} mm)."]),
                &[("d", mm(big.diameter_mm)), ("lobe", big.lobe.name().into())],
            ));
        }
        None => neg(
            rng,
            &mut out,
            false,
            &["No pulmonary nodule is detected.", "No nodule or mass is seen in either lung."],
        ),
    }
    match &f.lung_opacity {
        Some(o) => {
            let t = pick(
                rng,
                &[
                    "Patchy ground-glass opacities are seen in the {lobes}.",
                    "There are {sev} ground-glass density areas in the {lobes}.",
                    "Ground-glass opacity is noted in the {lobes}.",
                ],
            );
            out.push(fill(t, &[("lobes", lobes_phrase(&o.regions)), ("sev", o.severity.word().into())]));
            imp.push(fill(
                pick(rng, &["Ground-glass opacities in {side}.", "Ground-glass opacity ({side})."]),
                &[("side", side_phrase(o.side).into())],
            ));
        }
        None => neg(rng, &mut out, false, &["No ground-glass opacity.", "No ground glass opacities are seen."]),
    }
    match &f.consolidation {
        Some(c) => {
            let t = pick(
                rng,
                &[
                    "Consolidation with air bronchograms is seen in the {lobes}.",
                    "There is an area of consolidation containing air bronchograms in the {lobes}.",
                    "Airspace consolidation is present in the {lobes}, with air bronchograms.",
                ],
            );
            out.push(fill(t, &[("lobes", lobes_phrase(&c.regions))]));
            imp.push(fill(
                pick(rng, &["Consolidation in the {lobes}.", "Consolidation ({lobes})."]),
                &[("lobes", lobes_phrase(&c.regions))],
            ));
        }
        None => neg(rng, &mut out, false, &["No consolidation.", "No focal consolidation is seen."]),
    }
    match &f.atelectasis {
        Some(a) => {
            let t = pick(
                rng,
                &[
                    "{sev} subsegmental atelectasis is seen in the posterobasal {lobes}.",
                    "Atelectatic changes are noted in the dependent part of the {lobes}.",
                    "There is basal atelectasis in the {lobes} ({sev}).",
                ],
            );
            out.push(fill(t, &[("lobes", lobes_phrase(&a.regions)), ("sev", a.severity.word().into())]));
            imp.push(fill(
                pick(rng, &["Atelectasis in {side}.", "Basal atelectasis ({side})."]),
                &[("side", side_phrase(a.side).into())],
            ));
        }
        None => neg(rng, &mut out, false, &["No atelectasis.", "There is no atelectasis."]),
    }
    match &f.fibrotic_sequela {
        Some(fb) => {
            let t = pick(
                rng,
                &[
                    "Fibrotic bands consistent with sequelae are seen in the {lobes}.",
                    "{sev} fibrotic sequelae with reticular bands in the {lobes}.",
                    "Linear fibrotic changes are present in the {lobes}.",
                ],
            );
            out.push(fill(t, &[("lobes", lobes_phrase(&fb.regions)), ("sev", fb.severity.word().into())]));
            imp.push(pick(rng, &["Pulmonary fibrotic sequelae.", "Fibrotic sequelae in the lungs."]).into());
        }
        None => neg(rng, &mut out, false, &["No fibrotic sequelae.", "No fibrotic changes are noted."]),
    }
    match &f.septal_thickening {
        Some(s) => {
            let zone = if matches!(s.regions.first().map(|r| r.lobe), Some(Lobe::RLL | Lobe::LLL)) {
                "lower zones"
            } else {
                "mid and lower zones"
            };
            let t = pick(
                rng,
                &[
                    "{sev} interlobular septal thickening is seen in the subpleural {zone} of {side}.",
                    "Thickened interlobular septa are noted subpleurally in the {zone} of {side}.",
                    "There is interlobular septal thickening in {side}, {zone} predominant.",
                ],
            );
            out.push(fill(
                t,
                &[("sev", s.severity.word().into()), ("zone", zone.into()), ("side", side_phrase(s.side).into())],
            ));
            imp.push(pick(rng, &["Interlobular septal thickening.", "Septal thickening in the lung bases."]).into());
        }
        None => neg(rng, &mut out, true, &["No interlobular septal thickening."]),
    }
    match &f.mosaic_attenuation {
        Some(m) => {
            let t = pick(
                rng,
                &[
                    "A mosaic attenuation pattern is seen in {side}.",
                    "There is mosaic attenuation with alternating lobular densities in {side}.",
                ],
            );
            out.push(fill(t, &[("side", side_phrase(m.side).into())]));
            imp.push(
                pick(
                    rng,
                    &["Mosaic attenuation pattern.", "Mosaic attenuation, small airways disease cannot be excluded."],
                )
                .into(),
            );
        }
        None => neg(
            rng,
            &mut out,
            true,
            &["No mosaic attenuation pattern.", "Lung attenuation is homogeneous without mosaic pattern."],
        ),
    }
    match &f.bronchiectasis {
        Some(b) => {
            let t = pick(
                rng,
                &[
                    "{sev} cylindrical bronchiectasis is seen in the {zone} of {side}, bronchoarterial ratio up to {r}.",
                    "Bronchiectatic dilatation of the bronchi in the {zone} of {side} (bronchoarterial ratio {r}).",
                    "Bronchiectasis is present in the {zone} of {side}.",
                ],
            );
            out.push(fill(
                t,
                &[
                    ("sev", b.severity.word().into()),
                    ("zone", b.zone.clone()),
                    ("side", side_phrase(b.side).into()),
                    ("r", format!("{:.1}", b.value)),
                ],
            ));
            imp.push(pick(rng, &["Bronchiectasis.", "Bronchiectatic changes."]).into());
        }
        None => neg(rng, &mut out, false, &["No bronchiectasis.", "There is no bronchiectasis."]),
    }
    match &f.peribronchial_thickening {
        Some(b) => {
            let t = pick(
                rng,
                &[
                    "Peribronchial thickening is seen in the {zone} of {side}, with walls up to {w} mm.",
                    "{sev} peribronchial thickening in the {zone} of {side}.",
                    "Bronchial wall thickening is noted in the {zone} of {side}.",
                ],
            );
            out.push(fill(
                t,
                &[
                    ("sev", b.severity.word().into()),
                    ("zone", b.zone.clone()),
                    ("side", side_phrase(b.side).into()),
                    ("w", format!("{}", b.value)),
                ],
            ));
            imp.push(pick(rng, &["Peribronchial thickening.", "Bronchial wall thickening."]).into());
        }
        None => neg(rng, &mut out, true, &["No peribronchial thickening."]),
    }
    // Pleura.
    match &f.pleural_effusion {
        Some(e) => {
            let s = if e.sides.len() == 2 {
                let r = e.sides.iter().find(|s| s.side == Side::Right).map(|s| s.depth_mm).unwrap_or(0.0);
                let l = e.sides.iter().find(|s| s.side == Side::Left).map(|s| s.depth_mm).unwrap_or(0.0);
                let t = pick(
                    rng,
                    &[
                        "Bilateral pleural effusion, measuring {r} mm on the right and {l} mm on the left.",
                        "There is pleural effusion on both sides, {r} mm thick on the right and {l} mm thick on the left.",
                    ],
                );
                fill(t, &[("r", mm(r)), ("l", mm(l))])
            } else {
                let s = &e.sides[0];
                let t = pick(
                    rng,
                    &[
                        "{side} pleural effusion with a maximal thickness of {d} mm.",
                        "There is a {sev} {side} pleural effusion measuring {d} mm in thickness.",
                        "Pleural effusion reaching {d} mm in thickness is seen on the {side}.",
                    ],
                );
                fill(t, &[("side", s.side.word().into()), ("d", mm(s.depth_mm)), ("sev", s.severity.word().into())])
            };
            out.push(s);
            let w = match e.side {
                Side::Bilateral => "Bilateral pleural effusion.".to_string(),
                s => format!("{} pleural effusion.", cap(s.word())),
            };
            imp.push(w);
        }
        None => neg(
            rng,
            &mut out,
            false,
            &["No pleural effusion.", "No pleural fluid is seen.", "Pleural effusion is not observed."],
        ),
    }
    // Upper abdomen, bones, devices.
    out.push(
        pick(
            rng,
            &[
                "Upper abdominal organs included in the sections are unremarkable.",
                "The liver and spleen in the sections are of normal appearance.",
            ],
        )
        .into(),
    );
    out.push(
        pick(
            rng,
            &[
                "Bone structures in the study area are natural.",
                "No lytic or destructive bone lesion is seen.",
                "Degenerative changes are seen in the thoracic vertebrae.",
            ],
        )
        .into(),
    );
    match &f.medical_material {
        Some(m) => {
            let side = m.side.word();
            let t = match m.kind {
                DeviceKind::Pacemaker => pick(
                    rng,
                    &[
                        "A {side}-sided cardiac pacemaker is seen, with its lead extending to the right ventricle.",
                        "Pacemaker generator in the {side} infraclavicular region with a transvenous lead in the heart.",
                    ],
                ),
                DeviceKind::Port => pick(
                    rng,
                    &[
                        "A {side}-sided port catheter is seen, its tip at the cavoatrial junction.",
                        "Implantable port in the {side} pectoral region with its catheter in the superior vena cava.",
                    ],
                ),
            };
            out.push(fill(t, &[("side", side.into())]));
            imp.push(match m.kind {
                DeviceKind::Pacemaker => "Cardiac pacemaker.".to_string(),
                DeviceKind::Port => "Port catheter in place.".to_string(),
            });
        }
        None => neg(
            rng,
            &mut out,
            true,
            &["No medical device or foreign material is seen.", "No implanted device is present."],
        ),
    }
    if imp.is_empty() {
        imp.push(
            pick(
                rng,
                &["No significant pathology in the chest.", "Normal chest CT.", "Unremarkable chest CT examination."],
            )
            .into(),
        );
    }
    let clinical = pick(
        rng,
        &[
            "Cough.",
            "Dyspnea.",
            "Shortness of breath.",
            "Follow-up.",
            "Chest pain.",
            "Fever and cough.",
            "Screening.",
            "Not given.",
        ],
    );
    let technique = format!(
        "Non-contrast chest CT. Axial images with {:.1} mm slice thickness and {:.2} x {:.2} mm pixels (synthetic procedural phantom).",
        p.spacing_mm[2], p.spacing_mm[0], p.spacing_mm[1]
    );
    Report { clinical_information: clinical.into(), technique, findings: out.join(" "), impressions: imp.join(" ") }
}

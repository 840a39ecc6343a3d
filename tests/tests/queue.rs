//! The job queue on both backends: claims, leases, heartbeats, exactly-once
//! results, retries, fairness, deadlines, per-student limits, capacity fit,
//! cancellation and events.

use std::collections::HashSet;
use std::time::Duration;

use sanhak::db::courses::{self, NewCourse};
use sanhak::db::jobs::{self, Capacity, LeaseCheck, NewSubmission, QueuePolicy, Report};
use sanhak::db::{runners, Db};
use sanhak::domain::{CourseCode, CourseRole, OrgKind, UserKind};
use sanhak_runner::protocol::{self, Phase, Resources, SubmissionKind};
use sanhak_tests::{both_backends, TestApp};

struct World {
    courses: Vec<String>,
    students: Vec<String>,
    runner: String,
}

/// `n_courses` courses with `n_students` students each enrolled in all of them.
async fn world(app: &TestApp, n_courses: usize, n_students: usize) -> World {
    let uni = app.create_org("queue-uni", OrgKind::University).await;
    let prof = app
        .create_user("prof@queue.test", UserKind::Instructor)
        .await;
    let mut course_ids = Vec::new();
    for i in 0..n_courses {
        let code = CourseCode::parse(&format!("Q{i}")).expect("code");
        let id = courses::create(
            &app.db,
            NewCourse {
                code: &code,
                title: "Queue",
                term: "2027-spring",
                university_id: &uni.id,
                description: "",
                instructor_id: &prof.id,
            },
        )
        .await
        .expect("course");
        course_ids.push(id);
    }
    let mut students = Vec::new();
    for s in 0..n_students {
        let u = app
            .create_user(&format!("s{s}@queue.test"), UserKind::Student)
            .await;
        for c in &course_ids {
            courses::enroll(&app.db, c, &u.id, CourseRole::Student)
                .await
                .expect("enroll");
        }
        students.push(u.id);
    }
    let (runner, _) = runners::create(&app.db, "test-runner", None)
        .await
        .expect("runner");
    World {
        courses: course_ids,
        students,
        runner,
    }
}

fn cpu_job() -> Resources {
    Resources {
        cpu_slots: 1,
        gpu_count: 0,
        gpu_memory_mb: 0,
        wall_seconds: 60,
        memory_mb: 512,
    }
}

async fn submit_with(
    db: &Db,
    course: &str,
    student: &str,
    resources: Resources,
    due_at_ms: Option<i64>,
    policy: &QueuePolicy,
) -> String {
    let new = NewSubmission {
        course_id: course,
        lab_id: "fashion-transfer",
        lab_version: "1.0.0",
        lab_hash: "h",
        user_id: student,
        kind: SubmissionKind::Recipe,
        content: "learning_rate = 0.001\n",
        resources,
        step_scale: 1.0,
        due_at_ms,
        late_seconds: 0,
        penalty_pct: 0.0,
        limits: jobs::AttemptLimits::default(),
        regrade: None,
    };
    jobs::submit(db, &new, policy)
        .await
        .expect("submit")
        .expect("no limits")
        .1
}

async fn submit(db: &Db, course: &str, student: &str, policy: &QueuePolicy) -> String {
    submit_with(db, course, student, cpu_job(), None, policy).await
}

fn cpus(n: u32) -> Capacity {
    Capacity {
        free_cpu_slots: n,
        free_gpu_memory_mb: vec![],
    }
}

fn complete(lease: &str, points: f64) -> protocol::Complete {
    protocol::Complete {
        lease: lease.to_owned(),
        outcome: protocol::Outcome::Graded,
        points: Some(points),
        max_points: 10.0,
        metric: Some(0.9),
        public_metric: Some(0.91),
        message: "graded".into(),
        report: serde_json::json!({}),
        artifacts: vec![],
        usage: protocol::Usage {
            wall_seconds: 2.0,
            cpu_seconds: 3.0,
            gpu_seconds: 0.0,
        },
    }
}

async fn state(db: &Db, job: &str) -> String {
    jobs::state_of(db, job).await.expect("state").expect("job")
}

both_backends!(claim_complete_exactly_once, |app: TestApp| async move {
    let w = world(&app, 1, 1).await;
    let policy = QueuePolicy::default();
    let job = submit(&app.db, &w.courses[0], &w.students[0], &policy).await;
    assert_eq!(state(&app.db, &job).await, "queued");
    let claimed = jobs::claim(&app.db, &w.runner, &cpus(4), &policy)
        .await
        .unwrap()
        .expect("a job to claim");
    assert_eq!(claimed.job_id, job);
    assert_eq!(claimed.attempt, 1);
    assert_eq!(state(&app.db, &job).await, "leased");
    assert!(
        jobs::claim(&app.db, &w.runner, &cpus(4), &policy)
            .await
            .unwrap()
            .is_none(),
        "a leased job is not handed out twice"
    );
    // A report with a made-up lease is refused and changes nothing.
    let forged = jobs::complete(&app.db, &job, &complete("forged", 10.0), &policy)
        .await
        .unwrap();
    assert_eq!(forged, Report::LeaseLost);
    assert_eq!(state(&app.db, &job).await, "leased");

    let live = jobs::heartbeat(&app.db, &job, &claimed.lease, Phase::Running, &policy)
        .await
        .unwrap();
    assert_eq!(live, LeaseCheck::Live);
    assert_eq!(state(&app.db, &job).await, "running");
    let r = jobs::complete(&app.db, &job, &complete(&claimed.lease, 7.5), &policy)
        .await
        .unwrap();
    assert_eq!(r, Report::Recorded("done".into()));
    // The duplicate is ignored: the first grade stays.
    let dup = jobs::complete(&app.db, &job, &complete(&claimed.lease, 1.0), &policy)
        .await
        .unwrap();
    assert_eq!(dup, Report::Duplicate("done".into()));
    let view = jobs::view(&app.db, &job).await.unwrap().unwrap();
    assert_eq!(view.points, Some(7.5));
    assert!(view.started_ms.is_some() && view.finished_ms.is_some());
    assert_eq!(view.cpu_seconds, 3.0);
});

both_backends!(
    expired_lease_requeues_and_refuses_the_late_report,
    |app: TestApp| async move {
        let w = world(&app, 1, 1).await;
        let policy = QueuePolicy {
            lease_ms: 300,
            max_attempts: 2,
            ..QueuePolicy::default()
        };
        let job = submit(&app.db, &w.courses[0], &w.students[0], &policy).await;
        let first = jobs::claim(&app.db, &w.runner, &cpus(1), &policy)
            .await
            .unwrap()
            .expect("claim");
        tokio::time::sleep(Duration::from_millis(400)).await;
        // Expired but not yet reaped: already refused.
        let late = jobs::complete(&app.db, &job, &complete(&first.lease, 9.0), &policy)
            .await
            .unwrap();
        assert_eq!(late, Report::LeaseLost);
        let hb = jobs::heartbeat(&app.db, &job, &first.lease, Phase::Running, &policy)
            .await
            .unwrap();
        assert_eq!(hb, LeaseCheck::Lost);
        let reaped = jobs::reap_expired(&app.db).await.unwrap();
        assert_eq!(reaped.requeued, 1);
        assert_eq!(state(&app.db, &job).await, "queued");

        let second = jobs::claim(&app.db, &w.runner, &cpus(1), &policy)
            .await
            .unwrap()
            .expect("requeued job claimed again");
        assert_eq!(second.attempt, 2);
        assert_ne!(second.lease, first.lease);
        let old = jobs::complete(&app.db, &job, &complete(&first.lease, 9.0), &policy)
            .await
            .unwrap();
        assert_eq!(
            old,
            Report::LeaseLost,
            "the first runner's report is refused"
        );
        let new = jobs::complete(&app.db, &job, &complete(&second.lease, 6.0), &policy)
            .await
            .unwrap();
        assert_eq!(new, Report::Recorded("done".into()));
        let view = jobs::view(&app.db, &job).await.unwrap().unwrap();
        assert_eq!(view.points, Some(6.0));
        assert_eq!(view.attempts, 2);
    }
);

both_backends!(
    last_attempt_becomes_not_gradable_with_the_reason,
    |app: TestApp| async move {
        let w = world(&app, 1, 1).await;
        let policy = QueuePolicy {
            lease_ms: 100,
            max_attempts: 2,
            ..QueuePolicy::default()
        };
        let job = submit(&app.db, &w.courses[0], &w.students[0], &policy).await;
        for attempt in 1..=2 {
            let c = jobs::claim(&app.db, &w.runner, &cpus(1), &policy)
                .await
                .unwrap()
                .expect("claim");
            assert_eq!(c.attempt, attempt);
            tokio::time::sleep(Duration::from_millis(150)).await;
            jobs::reap_expired(&app.db).await.unwrap();
        }
        assert_eq!(state(&app.db, &job).await, "not_gradable");
        let view = jobs::view(&app.db, &job).await.unwrap().unwrap();
        assert!(
            view.message.contains("stopped answering") && view.message.contains('2'),
            "{}",
            view.message
        );
        assert_eq!(view.fault.as_deref(), Some("infrastructure"));
        assert!(jobs::claim(&app.db, &w.runner, &cpus(1), &policy)
            .await
            .unwrap()
            .is_none());
    }
);

both_backends!(failures_by_fault, |app: TestApp| async move {
    let w = world(&app, 1, 2).await;
    let policy = QueuePolicy {
        max_attempts: 2,
        ..QueuePolicy::default()
    };
    // The submission's fault ends the job.
    let a = submit(&app.db, &w.courses[0], &w.students[0], &policy).await;
    let c = jobs::claim(&app.db, &w.runner, &cpus(1), &policy)
        .await
        .unwrap()
        .unwrap();
    let fail = |lease: &str, fault| protocol::Fail {
        lease: lease.to_owned(),
        fault,
        message: "training ran out of memory (limit 512 MiB)".into(),
        usage: protocol::Usage::default(),
    };
    let r = jobs::fail(
        &app.db,
        &a,
        &fail(&c.lease, protocol::Fault::Submission),
        &policy,
    )
    .await
    .unwrap();
    assert_eq!(r, Report::Recorded("failed".into()));
    let v = jobs::view(&app.db, &a).await.unwrap().unwrap();
    assert!(v.message.contains("out of memory"));

    // An infrastructure fault retries, then gives up.
    let b = submit(&app.db, &w.courses[0], &w.students[1], &policy).await;
    let c1 = jobs::claim(&app.db, &w.runner, &cpus(1), &policy)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c1.job_id, b);
    let r = jobs::fail(
        &app.db,
        &b,
        &fail(&c1.lease, protocol::Fault::Infrastructure),
        &policy,
    )
    .await
    .unwrap();
    assert_eq!(r, Report::Recorded("queued".into()));
    let c2 = jobs::claim(&app.db, &w.runner, &cpus(1), &policy)
        .await
        .unwrap()
        .unwrap();
    let r = jobs::fail(
        &app.db,
        &b,
        &fail(&c2.lease, protocol::Fault::Infrastructure),
        &policy,
    )
    .await
    .unwrap();
    assert_eq!(r, Report::Recorded("not_gradable".into()));
});

both_backends!(
    one_running_job_per_student_per_course,
    |app: TestApp| async move {
        let w = world(&app, 2, 2).await;
        let policy = QueuePolicy::default();
        let (c0, c1) = (&w.courses[0], &w.courses[1]);
        let (s0, s1) = (&w.students[0], &w.students[1]);
        let a1 = submit(&app.db, c0, s0, &policy).await;
        let _a2 = submit(&app.db, c0, s0, &policy).await;
        let b1 = submit(&app.db, c0, s1, &policy).await;
        let other_course = submit(&app.db, c1, s0, &policy).await;
        let mut got = HashSet::new();
        for _ in 0..3 {
            let c = jobs::claim(&app.db, &w.runner, &cpus(8), &policy)
                .await
                .unwrap()
                .expect("claim");
            got.insert(c.job_id);
        }
        assert_eq!(
            got,
            HashSet::from([a1.clone(), b1, other_course]),
            "the student's second job in the same course waits"
        );
        assert!(jobs::claim(&app.db, &w.runner, &cpus(8), &policy)
            .await
            .unwrap()
            .is_none());
        // Raising the limit lets it run.
        let two = QueuePolicy {
            max_running_per_student: 2,
            ..QueuePolicy::default()
        };
        assert!(jobs::claim(&app.db, &w.runner, &cpus(8), &two)
            .await
            .unwrap()
            .is_some());
    }
);

both_backends!(
    fair_share_and_deadlines_order_the_queue,
    |app: TestApp| async move {
        let w = world(&app, 4, 6).await;
        let policy = QueuePolicy {
            max_running_per_student: 10,
            ..QueuePolicy::default()
        };
        let (busy, quiet, third, fourth) =
            (&w.courses[0], &w.courses[1], &w.courses[2], &w.courses[3]);
        // The busy course used a lot recently.
        let used = submit(&app.db, busy, &w.students[0], &policy).await;
        let c = jobs::claim(&app.db, &w.runner, &cpus(1), &policy)
            .await
            .unwrap()
            .unwrap();
        let mut heavy = complete(&c.lease, 5.0);
        heavy.usage.cpu_seconds = 36_000.0;
        jobs::complete(&app.db, &used, &heavy, &policy)
            .await
            .unwrap();

        // Busy course submits first, the quiet one later.
        let b = submit(&app.db, busy, &w.students[1], &policy).await;
        let q = submit(&app.db, quiet, &w.students[2], &policy).await;
        let first = jobs::claim(&app.db, &w.runner, &cpus(1), &policy)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            first.job_id, q,
            "the course with less recent usage goes first"
        );
        let second = jobs::claim(&app.db, &w.runner, &cpus(1), &policy)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(second.job_id, b);

        // Round robin between courses with equal usage: jobs in flight count, so
        // two courses that submitted two jobs each take turns instead of FIFO.
        let x1 = submit(&app.db, third, &w.students[3], &policy).await;
        let x2 = submit(&app.db, third, &w.students[4], &policy).await;
        let y1 = submit(&app.db, fourth, &w.students[5], &policy).await;
        let y2 = submit(&app.db, fourth, &w.students[0], &policy).await;
        let order: Vec<String> = {
            let mut v = Vec::new();
            for _ in 0..4 {
                v.push(
                    jobs::claim(&app.db, &w.runner, &cpus(1), &policy)
                        .await
                        .unwrap()
                        .unwrap()
                        .job_id,
                );
            }
            v
        };
        assert_eq!(order, vec![x1, y1, x2, y2]);

        // A lab due within the window jumps the queue, whatever the course.
        let late = submit(&app.db, busy, &w.students[0], &policy).await;
        let due_soon = jobs::now_ms() + 3_600_000;
        let urgent = submit_with(
            &app.db,
            busy,
            &w.students[1],
            cpu_job(),
            Some(due_soon),
            &policy,
        )
        .await;
        let far = jobs::now_ms() + 30 * 24 * 3_600_000;
        let _relaxed = submit_with(
            &app.db,
            quiet,
            &w.students[2],
            cpu_job(),
            Some(far),
            &policy,
        )
        .await;
        let next = jobs::claim(&app.db, &w.runner, &cpus(1), &policy)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(next.job_id, urgent);
        assert_ne!(next.job_id, late);
    }
);

both_backends!(
    claims_fit_the_reported_capacity,
    |app: TestApp| async move {
        let w = world(&app, 1, 4).await;
        let policy = QueuePolicy::default();
        let c = &w.courses[0];
        let two_gpus = Resources {
            cpu_slots: 2,
            gpu_count: 2,
            gpu_memory_mb: 40_000,
            wall_seconds: 60,
            memory_mb: 4096,
        };
        let gpu_job = submit_with(&app.db, c, &w.students[0], two_gpus, None, &policy).await;
        let big_cpu = Resources {
            cpu_slots: 8,
            ..cpu_job()
        };
        let cpu8 = submit_with(&app.db, c, &w.students[1], big_cpu, None, &policy).await;
        // One free GPU of 80 GB and one of 30 GB: the two-GPU job does not fit; nor 8 CPUs in 4.
        let small = Capacity {
            free_cpu_slots: 4,
            free_gpu_memory_mb: vec![80_000, 30_000],
        };
        assert!(jobs::claim(&app.db, &w.runner, &small, &policy)
            .await
            .unwrap()
            .is_none());
        let fits = Capacity {
            free_cpu_slots: 4,
            free_gpu_memory_mb: vec![41_000, 80_000, 10],
        };
        let got = jobs::claim(&app.db, &w.runner, &fits, &policy)
            .await
            .unwrap()
            .expect("the GPU job fits two GPUs with 40 GB free");
        assert_eq!(got.job_id, gpu_job);
        assert_eq!(got.resources.gpu_count, 2);
        let got = jobs::claim(&app.db, &w.runner, &cpus(8), &policy)
            .await
            .unwrap()
            .expect("8 CPU slots");
        assert_eq!(got.job_id, cpu8);
    }
);

both_backends!(
    cancellation_by_student_or_staff,
    |app: TestApp| async move {
        let w = world(&app, 1, 2).await;
        let policy = QueuePolicy::default();
        let queued = submit(&app.db, &w.courses[0], &w.students[0], &policy).await;
        assert_eq!(
            jobs::cancel(&app.db, &queued, "the student").await.unwrap(),
            Some("cancelled".into())
        );
        assert!(jobs::claim(&app.db, &w.runner, &cpus(1), &policy)
            .await
            .unwrap()
            .is_none());
        let running = submit(&app.db, &w.courses[0], &w.students[1], &policy).await;
        let c = jobs::claim(&app.db, &w.runner, &cpus(1), &policy)
            .await
            .unwrap()
            .unwrap();
        jobs::heartbeat(&app.db, &running, &c.lease, Phase::Running, &policy)
            .await
            .unwrap();
        jobs::cancel(&app.db, &running, "staff").await.unwrap();
        let hb = jobs::heartbeat(&app.db, &running, &c.lease, Phase::Running, &policy)
            .await
            .unwrap();
        assert_eq!(
            hb,
            LeaseCheck::Cancelled,
            "the runner learns at its next heartbeat"
        );
        let r = jobs::complete(&app.db, &running, &complete(&c.lease, 10.0), &policy)
            .await
            .unwrap();
        assert_eq!(
            r,
            Report::Duplicate("cancelled".into()),
            "no grade after a cancel"
        );
        assert_eq!(
            jobs::cancel(&app.db, &running, "staff").await.unwrap(),
            None
        );
    }
);

both_backends!(
    events_are_stored_in_order_capped_and_deduplicated,
    |app: TestApp| async move {
        let w = world(&app, 1, 1).await;
        let policy = QueuePolicy {
            max_events_per_job: 5,
            ..QueuePolicy::default()
        };
        let job = submit(&app.db, &w.courses[0], &w.students[0], &policy).await;
        let c = jobs::claim(&app.db, &w.runner, &cpus(1), &policy)
            .await
            .unwrap()
            .unwrap();
        let ev = |seq: u64| protocol::JobEvent {
            seq,
            at_ms: 1,
            kind: "event".into(),
            data: serde_json::json!({"event": "step", "step": seq, "loss": 1.0}),
        };
        let added = jobs::add_events(&app.db, &job, &c.lease, &[ev(0), ev(1), ev(2)], &policy)
            .await
            .unwrap()
            .expect("live lease");
        assert_eq!(added.len(), 3);
        // A retried batch (0..2 again) adds only what is new; the cap drops the rest.
        let added = jobs::add_events(
            &app.db,
            &job,
            &c.lease,
            &[ev(2), ev(3), ev(4), ev(5), ev(6)],
            &policy,
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(added.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4]);
        let stored = jobs::events(&app.db, &job, None, 100).await.unwrap();
        assert_eq!(
            stored.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4]
        );
        let after = jobs::events(&app.db, &job, Some(2), 100).await.unwrap();
        assert_eq!(after.len(), 2);
        let v = jobs::view(&app.db, &job).await.unwrap().unwrap();
        assert!(v.events_dropped >= 2, "{}", v.events_dropped);
        assert!(jobs::add_events(&app.db, &job, "wrong", &[ev(9)], &policy)
            .await
            .unwrap()
            .is_none());
    }
);

both_backends!(
    concurrent_runners_never_share_a_job,
    |app: TestApp| async move {
        let w = world(&app, 4, 10).await;
        let policy = QueuePolicy {
            max_running_per_student: 1,
            ..QueuePolicy::default()
        };
        // 10 students × 4 courses × 2 jobs: at most 40 can run at once (one per
        // student per course).
        let mut all = Vec::new();
        for c in &w.courses {
            for s in &w.students {
                for _ in 0..2 {
                    all.push(submit(&app.db, c, s, &policy).await);
                }
            }
        }
        let mut tasks = Vec::new();
        for i in 0..8 {
            let db = app.db.clone();
            let runner = w.runner.clone();
            let policy = policy.clone();
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    match jobs::claim(&db, &runner, &cpus(1), &policy).await {
                        Ok(Some(c)) => mine.push(c.job_id),
                        Ok(None) => break,
                        Err(e) => panic!("runner {i}: {e}"),
                    }
                }
                mine
            }));
        }
        let mut claimed = Vec::new();
        for t in tasks {
            claimed.extend(t.await.unwrap());
        }
        let unique: HashSet<&String> = claimed.iter().collect();
        assert_eq!(unique.len(), claimed.len(), "a job was handed out twice");
        assert_eq!(claimed.len(), 40, "exactly one job per student per course");
    }
);

both_backends!(
    concurrent_event_batches_of_many_jobs_are_all_stored,
    |app: TestApp| async move {
        // Eight running jobs whose runners post events at the same moment
        // (on SQLite a read-then-write transaction must not fail with
        // "database is locked" when another commits first).
        let w = world(&app, 1, 8).await;
        let policy = QueuePolicy::default();
        let mut claimed = Vec::new();
        for s in &w.students {
            let job = submit(&app.db, &w.courses[0], s, &policy).await;
            let c = jobs::claim(&app.db, &w.runner, &cpus(8), &policy)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(c.job_id, job);
            claimed.push(c);
        }
        let mut tasks = Vec::new();
        for c in claimed.clone() {
            let db = app.db.clone();
            let policy = policy.clone();
            tasks.push(tokio::spawn(async move {
                for seq in 0..25u64 {
                    let e = protocol::JobEvent {
                        seq,
                        at_ms: 1,
                        kind: "log".into(),
                        data: serde_json::json!("line"),
                    };
                    jobs::add_events(&db, &c.job_id, &c.lease, &[e], &policy)
                        .await
                        .expect("stored")
                        .expect("live lease");
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        for c in &claimed {
            let stored = jobs::events(&app.db, &c.job_id, None, 100).await.unwrap();
            assert_eq!(stored.len(), 25);
        }
    }
);

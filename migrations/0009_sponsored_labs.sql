-- Company-sponsored labs: a company member publishes a lab package on the
-- company's behalf; instructors adopt it into courses and the lab page
-- credits the company. A lab's sponsor is fixed by its first version: later
-- versions come only from the same sponsor (or, for unsponsored labs, from
-- no sponsor), so no one can take over another's lab id.
ALTER TABLE lab_versions ADD COLUMN sponsor_org_id TEXT REFERENCES organisations (id) ON DELETE SET NULL;
CREATE INDEX lab_versions_sponsor ON lab_versions (sponsor_org_id);

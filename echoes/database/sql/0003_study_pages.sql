-- echoes schema 3: one page of the study list in arrival or study-date order
-- (IndexReader.study_page: the Browser's list, echoes studies --limit) read
-- through an index, not by sorting every study.  "C" collation: the order
-- Python gives the same text, as the embedded backend pages; a backward scan
-- serves the newest-first pages.
CREATE INDEX studies_page_date ON studies (study_date COLLATE "C", study_time COLLATE "C",
                                           study_instance_uid COLLATE "C");
CREATE INDEX studies_page_received ON studies (updated COLLATE "C",
                                               study_instance_uid COLLATE "C");

-- The totals a page is shown with ("studies 1-50 of 200000, N instances"),
-- kept in index_state by triggers on studies, whatever statement writes it:
-- a page then costs its rows, not a count over every study.
ALTER TABLE index_state ADD COLUMN studies bigint NOT NULL DEFAULT 0,
                        ADD COLUMN instances bigint NOT NULL DEFAULT 0;
UPDATE index_state SET studies = (SELECT count(*) FROM studies),
                       instances = (SELECT coalesce(sum(number_of_instances), 0) FROM studies);

CREATE FUNCTION index_state_studies_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE index_state SET studies = studies + (SELECT count(*) FROM added),
        instances = instances + (SELECT coalesce(sum(number_of_instances), 0) FROM added);
    RETURN NULL;
END $$;
CREATE FUNCTION index_state_studies_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE index_state SET studies = studies - (SELECT count(*) FROM removed),
        instances = instances - (SELECT coalesce(sum(number_of_instances), 0) FROM removed);
    RETURN NULL;
END $$;
CREATE FUNCTION index_state_studies_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE index_state SET
        instances = instances + (SELECT coalesce(sum(number_of_instances), 0) FROM added)
                              - (SELECT coalesce(sum(number_of_instances), 0) FROM removed);
    RETURN NULL;
END $$;
CREATE TRIGGER studies_added AFTER INSERT ON studies REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION index_state_studies_added();
CREATE TRIGGER studies_removed AFTER DELETE ON studies REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION index_state_studies_removed();
CREATE TRIGGER studies_changed AFTER UPDATE ON studies
    REFERENCING OLD TABLE AS removed NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION index_state_studies_changed();

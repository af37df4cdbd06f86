-- echoes schema 3: one page of the study list in arrival or study-date order
-- (IndexReader.study_page: the Browser's list, echoes studies --limit) read
-- through an index, not by sorting every study.  "C" collation: the order
-- Python gives the same text, as the embedded backend pages; a backward scan
-- serves the newest-first pages.
CREATE INDEX studies_page_date ON studies (study_date COLLATE "C", study_time COLLATE "C",
                                           study_instance_uid COLLATE "C");
CREATE INDEX studies_page_received ON studies (updated COLLATE "C",
                                               study_instance_uid COLLATE "C");

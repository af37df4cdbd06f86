/* echoes Browser: the image viewer page (templates/viewer.html).
 *
 * dwv (vendor/dwv, see tools/vendor-viewer for its pinned version and
 * licence) draws the images and runs the mouse tools: Scroll, WindowLevel,
 * ZoomAndPan.  This script only wires dwv to the page: it loads one series
 * through echoes' own DICOMweb (WADO-RS, multipart/related, the session
 * cookie of the Browser; nothing from another origin), fills the preset list,
 * the image slider, the play button and the tags beside the image, and shows
 * the rescaled value of the pixel under the cursor.  The page's
 * Content-Security-Policy allows no inline script: everything it needs is in
 * data- attributes.  Text goes into the page with textContent only.
 */
import * as dwv from "./vendor/dwv/dwv.min.js";

/** The tags shown beside the image: [DICOM JSON tag, label]. */
const TAGS = [
  ["00100010", "Patient"], ["00100020", "Patient ID"], ["00100030", "Birth date"],
  ["00100040", "Sex"], ["00080020", "Study date"], ["00081030", "Study"],
  ["00080050", "Accession"], ["00080060", "Modality"], ["00200011", "Series number"],
  ["0008103E", "Series"], ["00200013", "Instance number"], ["00201041", "Slice location"],
  ["00180050", "Slice thickness"], ["00200032", "Image position"], ["00280010", "Rows"],
  ["00280011", "Columns"], ["00280030", "Pixel spacing"], ["00280008", "Frames"],
  ["00281050", "Window center"], ["00281051", "Window width"], ["00281052", "Rescale intercept"],
  ["00281053", "Rescale slope"], ["00180060", "kVp"], ["00080070", "Manufacturer"],
  ["00080018", "SOP Instance UID"],
];

const root = document.getElementById("viewer");
const $ = (id) => document.getElementById(id);

/** A DICOM JSON attribute as text (person names by their alphabetic group). */
function tagText(attribute) {
  if (!attribute || !attribute.Value) return "";
  const date = (v) => (/^\d{8}$/.test(v) ? `${v.slice(0, 4)}-${v.slice(4, 6)}-${v.slice(6)}` : v);
  return attribute.Value.map((v) => (v && typeof v === "object" ? v.Alphabetic || ""
    : attribute.vr === "DA" ? date(String(v)) : String(v)))
    .join(" \\ ");
}

function rounded(value) {
  return Number.isInteger(value) ? String(value) : String(Math.round(value * 1000) / 1000);
}

function start() {
  const base = root.dataset.dicomweb;
  const study = root.dataset.studyUid;
  const series = root.dataset.seriesUid;
  const seriesUrl = `${base}/studies/${encodeURIComponent(study)}/series/${encodeURIComponent(series)}`;
  const byUid = new Map();  // SOPInstanceUID -> DICOM JSON of the instance (for the tags)
  // Stack mode (see chooseMode): the instances in order, one loaded at a time.
  let stack = [];
  let current = 0;
  // Explicit VR Little Endian when echoes can make it, else as stored (an object echoes
  // will not or cannot convert): dwv decodes JPEG, JPEG 2000 and RLE itself.
  const DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=';
  const preferred = [{ name: "Accept", value: `${DICOM}1.2.840.10008.1.2.1, ${DICOM}*` }];
  let accept = preferred;
  // When a load fails all the same (an answer cut short, a converted object dwv cannot
  // read), the same images once more as stored, for dwv to decode if it can.
  const asStored = [{ name: "Accept", value: `${DICOM}*` }];
  let loadAgain = null;  // what to call for that second try (null: tried, or not started)

  const app = new dwv.App();
  const options = new dwv.AppOptions({ "*": [new dwv.ViewConfig("viewer-canvas")] });
  options.tools = { Scroll: new dwv.ToolConfig(), WindowLevel: new dwv.ToolConfig(),
                    ZoomAndPan: new dwv.ToolConfig() };
  app.init(options);

  const controller = () => {
    const group = app.getActiveLayerGroup();
    const layer = group && group.getActiveViewLayer();
    return layer ? layer.getViewController() : undefined;
  };

  function showTags() {
    const vc = controller();
    const list = $("viewer-tags");
    const instance = vc ? byUid.get(vc.getCurrentImageUid()) : undefined;
    list.replaceChildren();
    if (!instance) return;
    for (const [tag, label] of TAGS) {
      const text = tagText(instance[tag]);
      if (!text) continue;
      const row = document.createElement("div");
      const dt = document.createElement("dt");
      const dd = document.createElement("dd");
      dt.textContent = label;
      dd.textContent = text;
      dd.dataset.tag = tag;
      row.append(dt, dd);
      list.append(row);
    }
  }

  /** The dimension the slider, keys and "Image n / N" move along: the slices, or the
   *  frames of a multi-frame image that dwv keeps as a fourth dimension. */
  function browseDim(vc) {
    const size = vc.getImageSize();
    const dim = vc.getScrollDimIndex();
    return size.get(dim) > 1 || size.length() < 4 ? dim : 3;
  }

  function showPosition() {
    const vc = controller();
    if (!vc) return;
    const size = vc.getImageSize();
    const dim = browseDim(vc);
    const index = vc.getCurrentIndex();
    let count = size.get(dim);
    let at = index.get(dim) + 1;
    let text = `${dim === 3 ? "Frame" : "Image"} ${at} / ${count}`;
    if (dim !== 3 && size.length() > 3 && size.get(3) > 1) {
      text += ` · frame ${index.get(3) + 1} / ${size.get(3)}`;
    }
    if (stack.length) {  // the instance among the series' ones, then its frame if it has several
      text = `Image ${current + 1} / ${stack.length}` + (count > 1 ? ` · frame ${at} / ${count}` : "");
      [at, count] = [current + 1, stack.length];
    }
    const position = $("viewer-position");
    position.textContent = text;
    position.dataset.index = String(at);
    position.dataset.count = String(count);
    position.dataset.sopInstanceUid = vc.getCurrentImageUid() || "";
    const slider = $("viewer-slider");
    slider.max = String(count);
    slider.value = String(at);
    slider.disabled = count < 2;
    showTags();
  }

  function showWindow() {
    const vc = controller();
    if (!vc || !vc.canWindowLevel()) return;
    const wl = vc.getWindowLevel();
    const shown = $("viewer-wl");
    shown.textContent = `W ${rounded(wl.width)} / L ${rounded(wl.center)}`;
    shown.dataset.width = String(wl.width);
    shown.dataset.center = String(wl.center);
    const name = vc.getCurrentWindowPresetName();
    const select = $("viewer-preset");
    if (name && [...select.options].some((o) => o.value === name)) select.value = name;
  }

  function showZoom() {
    const group = app.getActiveLayerGroup();
    if (!group) return;
    $("viewer-zoom").textContent = `Zoom ${Math.round(group.getAddedScale().x * 100)}%`;
  }

  function setTool(name) {
    app.setTool(name);
    for (const button of document.querySelectorAll("[data-tool]")) {
      const on = button.dataset.tool === name;
      button.classList.toggle("secondary", !on);
      button.setAttribute("aria-pressed", on ? "true" : "false");
    }
    root.dataset.tool = name;
  }

  function step(delta) {
    const vc = controller();
    if (!vc) return;
    if (stack.length) {
      showInstance(current + delta);
      return;
    }
    const dim = browseDim(vc);
    const values = vc.getCurrentIndex().getValues().slice();
    const next = values[dim] + delta;
    if (next < 0 || next >= vc.getImageSize().get(dim)) return;
    values[dim] = next;
    vc.setCurrentIndex(new dwv.Index(values));
  }

  /** The rescaled value under the mouse, with its column and row (data- for the tests). */
  function showPixel(event) {
    const group = app.getActiveLayerGroup();
    const layer = group && group.getBaseViewLayer();
    const pixel = $("viewer-pixel");
    if (!layer) return;
    const box = $("viewer-canvas").getBoundingClientRect();
    const vc = layer.getViewController();
    const planePos = layer.displayToPlanePos(
      new dwv.Point2D(event.clientX - box.left, event.clientY - box.top));
    const position = vc.getPositionFromPlanePoint(planePos);
    const value = vc.getRescaledImageValue(position);
    if (value === undefined) {
      pixel.textContent = "";
      delete pixel.dataset.value;
      return;
    }
    const index = vc.getIndexFromPosition(position);
    const unit = vc.getPixelUnit();
    pixel.textContent = `x ${index.get(0)}, y ${index.get(1)}: ${rounded(value)}${unit ? " " + unit : ""}`;
    pixel.dataset.column = String(index.get(0));
    pixel.dataset.row = String(index.get(1));
    pixel.dataset.value = String(value);
    pixel.dataset.sopInstanceUid = vc.getCurrentImageUid() || "";
  }

  app.addEventListener("loadprogress", (event) => {
    if (event.lengthComputable || event.total) {
      $("viewer-loading").textContent =
        `Loading images… ${Math.round((100 * event.loaded) / (event.total || 100))}%`;
    }
  });
  app.addEventListener("error", (event) => {
    if (loadAgain && accept !== asStored) {
      accept = asStored;
      root.dataset.asStored = "true";
      const again = loadAgain;
      loadAgain = null;
      app.reset();
      again();
      return;
    }
    failed((event.error && event.error.message) || event.message
           || "echoes could not convert them and this viewer cannot decode them as stored "
           + "(see the echoes log)");
  });
  app.addEventListener("load", () => {
    const vc = controller();
    loadAgain = null;
    $("viewer-loading").hidden = true;
    const select = $("viewer-preset");
    select.replaceChildren();
    for (const name of vc.getWindowLevelPresetsNames()) {
      const option = document.createElement("option");
      option.value = option.textContent = name;
      select.append(option);
    }
    select.disabled = !vc.canWindowLevel() || select.options.length === 0;
    const size = vc.getImageSize();
    $("viewer-play").disabled = size.get(browseDim(vc)) < 2;
    $("viewer-reset").disabled = false;
    setTool(root.dataset.tool
            || (size.get(browseDim(vc)) > 1 || stack.length > 1 ? "Scroll" : "WindowLevel"));
    showPosition();
    showWindow();
    showZoom();
    root.dataset.state = "loaded";
  });
  app.addEventListener("positionchange", showPosition);
  app.addEventListener("wlchange", showWindow);
  app.addEventListener("zoomchange", showZoom);
  window.addEventListener("resize", app.onResize);

  for (const button of document.querySelectorAll("[data-tool]")) {
    button.addEventListener("click", () => setTool(button.dataset.tool));
  }
  $("viewer-preset").addEventListener("change", (event) => {
    controller().setWindowLevelPreset(event.target.value);
  });
  $("viewer-slider").addEventListener("input", (event) => {
    const vc = controller();
    step(Number(event.target.value) - 1
         - (stack.length ? current : vc.getCurrentIndex().get(browseDim(vc))));
  });
  $("viewer-play").addEventListener("click", () => {
    const vc = controller();
    if (vc.isPlaying()) vc.stop(); else vc.play();
    $("viewer-play").textContent = vc.isPlaying() ? "Stop" : "Play";
    root.dataset.playing = vc.isPlaying() ? "true" : "false";
  });
  $("viewer-reset").addEventListener("click", () => {
    app.resetDisplay();
    showWindow();
    showZoom();
  });
  const canvas = $("viewer-canvas");
  canvas.addEventListener("mousemove", showPixel);
  canvas.addEventListener("keydown", (event) => {
    const moves = { ArrowUp: -1, ArrowLeft: -1, PageUp: -1, ArrowDown: 1, ArrowRight: 1, PageDown: 1 };
    if (event.key in moves) {
      event.preventDefault();
      step(moves[event.key]);
    }
  });

  // Stack mode: the wheel steps through the instances (dwv scrolls within one image only).
  let wheel = 0;
  canvas.addEventListener("wheel", (event) => {
    if (!stack.length || root.dataset.tool !== "Scroll") return;
    const vc = controller();
    if (vc && vc.getImageSize().get(browseDim(vc)) > 1) return;  // its frames: dwv's
    event.stopPropagation();  // not to dwv's Scroll as well: its layers go with app.reset()
    wheel += event.deltaY;
    if (Math.abs(wheel) < 50) return;
    step(wheel < 0 ? 1 : -1);  // wheel up: the next image, as dwv does
    wheel = 0;
  }, { capture: true, passive: true });

  function failed(problem) {
    $("viewer-loading").hidden = false;
    $("viewer-loading").textContent = `The images could not be shown: ${problem}`;
    $("viewer-loading").classList.add("bad");
    root.dataset.state = "error";
  }
  // dwv throws some problems (an image it cannot build) instead of firing "error".
  window.addEventListener("error", (event) => {
    if (root.dataset.state === "loading") failed(event.message || "script error");
  });

  /** Stack mode, one instance at a time: dwv loads it alone (single or multi-frame). */
  function showInstance(number) {
    if (number < 0 || number >= stack.length || root.dataset.state === "loading") return;
    current = number;
    root.dataset.state = "loading";
    app.reset();
    const sop = tagText(stack[number]["00080018"]);
    accept = preferred;
    const load = () => app.loadURLs([`${seriesUrl}/instances/${encodeURIComponent(sop)}`],
                                    { requestHeaders: accept });
    loadAgain = load;
    load();
  }

  /** A volume (one dwv image of every instance: scroll, play through slices) when every
   *  instance is one frame with a position and orientation, all of one size at distinct
   *  positions (a CT or MR series); else a stack (CR/DX/US/SC images, instances of
   *  several frames, or images without geometry), which dwv cannot make one image of. */
  function chooseMode(instances) {
    const text = (doc, tag) => tagText(doc[tag]);
    const positions = new Set(instances.map((doc) => text(doc, "00200032")));
    const volume = instances.length > 1 && positions.size === instances.length
      && instances.every((doc) => (doc["00200032"]?.Value || []).length === 3
        && (doc["00200037"]?.Value || []).length === 6 && Number(text(doc, "00280008") || 1) === 1
        && text(doc, "00280010") === text(instances[0], "00280010")
        && text(doc, "00280011") === text(instances[0], "00280011"));
    if (volume || instances.length <= 1) return [];
    const number = (doc) => Number(text(doc, "00200013")) || 0;
    return instances.slice().sort((a, b) => number(a) - number(b)
      || text(a, "00080018").localeCompare(text(b, "00080018")));
  }

  // The tags of every instance (one request), then the pixels: the whole series in one
  // multipart request (a volume), or the first instance of a stack.
  root.dataset.state = "loading";
  fetch(`${seriesUrl}/metadata`, { credentials: "same-origin",
                                   headers: { Accept: "application/dicom+json" } })
    .then((response) => {
      if (response.status === 401) throw new Error("the session ended: log in again");
      if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
      return response.json();
    })
    .then((instances) => {
      for (const instance of instances) byUid.set(tagText(instance["00080018"]), instance);
      stack = chooseMode(instances);
      root.dataset.mode = stack.length ? "stack" : "volume";
      if (stack.length) {
        root.dataset.state = "";
        showInstance(0);
      } else {
        loadAgain = () => app.loadURLs([seriesUrl], { requestHeaders: accept });
        loadAgain();
      }
    })
    .catch((error) => failed(error.message || String(error)));
}

if (root) start();
